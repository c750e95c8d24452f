"""What a distilled student's checkpoint says about sampling it: its default sampler, and the samplers it refuses.

The recipe's `distilled` entry (written by udm.distill.module) holds the method, the steps the student was distilled
for and the sampler config it samples with. udm-sample and udm-eval take that sampler when the command line names
none (`sampler.steps=...` alone changes the student's own sampler); every sampler is held against the entry:

- progressive: the student learned one inverse step for two of its teacher's on that grid, so the sampler must take
  the inverse step (one network evaluation per step) and no more steps than the student was distilled for;
- consistency: the student's x0_hat is a consistency function, sampled by the baseline step (naive) at any steps.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from udm.distill.progressive import takes_one_inverse_step
from udm.errors import UdmError


def sampler_name(config: dict[str, Any]) -> str:
    """The name a student's sampler goes by in file names: student-<class>, e.g. student-euler."""
    return "student-" + str(config.get("_target_", "sampler")).rsplit(".", 1)[-1].lower()


def with_student_sampler(cfg: DictConfig, recipe: dict[str, Any], chosen_keys: set[str] | None) -> DictConfig:
    """cfg with the checkpoint's distilled sampler where the user named no sampler group (`chosen_keys`: the command
    line's keys; None: cfg was built in code, and its sampler is the caller's choice). sampler.KEY=... on the command
    line sets that key of the student's sampler."""
    distilled = recipe.get("distilled")
    if distilled is None or chosen_keys is None or "sampler" in chosen_keys:
        return cfg
    config = dict(distilled["sampler"])
    for key in chosen_keys:
        if key.startswith("sampler."):
            config[key.split(".", 1)[1]] = OmegaConf.select(cfg, key)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.sampler = config
        cfg.sampler_name = sampler_name(config)
    return cfg


def grid_of(sampler: dict[str, Any]) -> str:
    """A recorded sampler's grid as its config keys, e.g. "grid=power, power=0.5" (the sampler's default grid: its
    target's name)."""
    keys = [f"{k}={sampler[k]}" for k in ("grid", "rho", "power") if k in sampler]
    return ", ".join(keys) or f"{sampler['_target_']}'s default grid"


def learned_times(own: dict[str, Any], steps: int, process) -> list:
    """The times a distilled model's own sampler config (`own`, recorded in its checkpoint) visits at `steps`."""
    return list(instantiate({**own, "steps": steps}).timesteps(process))


def check_taught_grid(recipe: dict[str, Any], sampler, process, teacher: str) -> None:
    """A distilled teacher teaches on the times it learned: the distillation's sampler (at the teacher's steps) must
    visit the times of the teacher's own sampler at those steps. Nothing to check for a teacher that was not distilled."""
    distilled = recipe.get("distilled")
    if distilled is None:
        return
    own = distilled["sampler"]
    taught = list(sampler.timesteps(process))
    learned = learned_times(own, len(taught), process)
    if taught != learned:
        raise UdmError(f"the teacher {teacher} was distilled on the times {learned}; distill.sampler visits {taught} at "
                       f"{len(taught)} steps: give distill.sampler the teacher's grid ({grid_of(own)})")


def check_student(recipe: dict[str, Any], sampler, process) -> None:
    """Refuse a sampler a distilled student was not distilled for (nothing to check on other checkpoints)."""
    distilled = recipe.get("distilled")
    if distilled is None:
        return
    method, steps, own = distilled["method"], int(distilled["steps"]), distilled["sampler"]
    default = f"its own sampler ({own['_target_']}, the default when no sampler= is given)"
    step = getattr(sampler, "step", None)
    if step is None or getattr(sampler, "corrector", None) is not None or getattr(sampler, "transform", None) is not None:
        raise UdmError(f"this student was distilled by {method} distillation for {own['_target_']}'s steps; "
                       f"{type(sampler).__name__} samples another way, which it never learned; sample it with {default}")
    if method == "progressive":
        if not takes_one_inverse_step(sampler):
            raise UdmError(f"this student was distilled by progressive distillation for {steps} inverse steps; "
                           f"{type(sampler).__name__} takes another step rule, which it never learned; sample it with {default}")
        taken = sampler.timesteps(process)
        if len(taken) > steps:
            raise UdmError(f"this student was distilled for {steps} steps and this sampler needs {len(taken)} network "
                           f"evaluations; a progressive student learns no step finer than its last round's: use "
                           f"sampler.steps={steps} or fewer (or sample its teacher, {distilled.get('teacher')}, for more)")
        learned = learned_times(own, len(taken), process)
        if list(taken) != learned:
            raise UdmError(f"this student learned its steps on the times {learned}; this sampler visits {list(taken)}: "
                           f"sample it on the student's grid ({grid_of(own)})")
    elif method == "consistency" and (step.uses_inverse or step.second_order):
        raise UdmError(f"this student is a consistency model: it samples by the baseline step (redrawing x_s from "
                       f"its x0_hat), not by {type(sampler).__name__}'s deterministic step; sample it with {default}")
