"""train(cfg): config -> data module + process + net -> DiffusionModule -> Lightning Trainer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from udm.callbacks import PREVIOUS_CONFIG, SaveOnSignal
from udm.checkpoint import CHECKPOINT_KEY, build_from_checkpoint, check_compatible, find_checkpoint, load_checkpoint
from udm.distill.module import DistillationModule
from udm.distill.progressive import held
from udm.distill.recipe import check_taught_grid
from udm.errors import UdmError
from udm.jobs.outputs import check_output_folder
from udm.jobs.run_lock import run_lock
from udm.jobs.settings import command_line_keys
from udm.loggers import KeepingCSVLogger
from udm.lit import DiffusionModule


def resume_path(resume: str | None, runs_root: Path) -> Path | None:
    """resume=PATH (a .ckpt or a run folder) or resume=last (newest run under runs_root with a last.ckpt)."""
    if not resume:
        return None
    if resume == "last":
        found = sorted(runs_root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UdmError(f"resume=last: no run under {runs_root} has checkpoints/last.ckpt")
        return found[-1]
    return find_checkpoint(resume)


CONDITION_KEYS = ("num_classes", "prompt_length")  # what a net reads the data's condition with


def fill_from_data(node: DictConfig, derived: dict[str, Any], group: str) -> None:
    """Set the keys a process/net config leaves as ??? (at any depth) from what the data module derived (vocab size,
    ...); a condition key (num_classes, prompt_length) the data do not derive becomes null (no such condition)."""
    for key in node:
        if OmegaConf.is_missing(node, key):
            if key in CONDITION_KEYS and key not in derived:  # ??? = as the data say: none without such a condition
                node[key] = None
            elif key not in derived:
                raise UdmError(f"{group}.{key} is required (it is ??? in the config) and data does not provide it; "
                               f"set {group}.{key}=... on the command line")
            else:
                node[key] = derived[key]
        elif isinstance(node[key], DictConfig):
            fill_from_data(node[key], derived, f"{group}.{key}")


def check_condition(net: DictConfig, derived: dict[str, Any], condition: str) -> None:
    """The net takes the data's condition (data.condition=...) in the size the data have, and none it does not have."""
    for key in CONDITION_KEYS:
        want, have = derived.get(key), net.get(key)
        if want is not None and have != want:
            raise UdmError(f"data.condition={condition} yields " + (f"{want} classes" if key == "num_classes" else f"prompts of {want} tokens")
                           + f", but net.{key}={have}; set net.{key}={want} (or net.{key}=??? to take it from the data)")
        if want is None and have is not None:
            raise UdmError(f"net.{key}={have} reads a condition, but the data yield none of that kind (data.condition={condition}); "
                           f"set net.{key}=null or choose a data.condition that provides it")


def check_trainer_steps(trainer: DictConfig) -> None:
    """trainer.max_steps and val_check_interval (also the checkpoint interval) in range, before anything runs."""
    steps, interval = trainer.get("max_steps", -1), trainer.get("val_check_interval", 1.0)
    if type(steps) is not int or steps < -1:
        raise UdmError(f"trainer.max_steps must be a whole number of steps (-1: no limit), got {steps!r}")
    if steps == 0:
        raise UdmError("trainer.max_steps=0 trains nothing and writes no checkpoint; give a number of steps (-1: no limit)")
    if not ((type(interval) is int and interval >= 1) or (type(interval) is float and 0 < interval <= 1)):
        raise UdmError(f"trainer.val_check_interval (also the checkpoint interval) must be a whole number of steps >= 1 "
                       f"or a fraction of an epoch in (0, 1], got {interval!r}")


def check_schedule(cfg: DictConfig) -> None:
    """OneCycleLR divides by its warm-up length pct_start x total_steps - 1 and fails at its first step when that
    is 0 (e.g. 20 steps at pct_start 0.05): refused before anything runs."""
    scheduler = cfg.get("scheduler")
    if not scheduler or not str(scheduler.get("_target_", "")).endswith("OneCycleLR"):
        return
    total, pct = scheduler.get("total_steps"), scheduler.get("pct_start", 0.3)
    if isinstance(total, int) and total > 0 and (float(pct * total) - 1 == 0 or pct >= 1):
        raise UdmError(f"OneCycleLR cannot run {total} steps with a warm-up of pct_start={pct} ({pct * total:g} step): "
                       f"its learning-rate ramp would divide by zero; change trainer.max_steps or scheduler.pct_start")


def refuse_a_used_folder(cfg: DictConfig, out: Path) -> None:
    """A fresh run (no resume=) into a folder that already holds a run's checkpoints is refused: it would write
    last-v1.ckpt beside the other run's last.ckpt (which udm-sample then reads) and its config over that run's."""
    folder = Path(OmegaConf.select(cfg, "callbacks.checkpoint.dirpath", default=None) or out / "checkpoints")
    if folder.is_dir() and any(folder.glob("*.ckpt")):
        raise UdmError(f"{folder} already holds another run's checkpoints; continue that run with resume={out}, or "
                       f"train a new one in another folder (hydra.run.dir=...)")


def checkpoint_bytes(module: torch.nn.Module) -> int:
    """A lower bound on one checkpoint's size: the weights, their EMA copy and Adam's two moments."""
    return 4 * sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def build_recipe(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """The plain config that rebuilds process and net and decodes samples; stored in every checkpoint."""
    return {
        "process": OmegaConf.to_container(cfg.process, resolve=True),
        "net": OmegaConf.to_container(cfg.net, resolve=True),
        "shape": list(datamodule.shape),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "modality": datamodule.modality,
        **datamodule.recipe(),
    }


def distillation(cfg: DictConfig, teacher: dict[str, Any]):
    """The distillation objective of distill=..., held against its teacher; sets trainer.max_steps to the rounds'
    sum. Refused: Lightning's EMA of the whole module (it would average the teacher and the round across rounds),
    a trainer.max_steps of another length, and a progressive student asked to teach more steps than it learned."""
    if OmegaConf.select(cfg, "callbacks.ema") is not None:
        raise UdmError("callbacks.ema averages the whole module, the teacher and the round too; a distillation keeps "
                       "its students' own weights (the consistency target is its own EMA): set callbacks.ema=null")
    objective = instantiate(cfg.distill)
    total = objective.rounds * objective.steps_per_round
    if "trainer.max_steps" in command_line_keys() and cfg.trainer.max_steps != total:
        raise UdmError(f"a distillation trains {objective.rounds} round(s) of distill.steps_per_round="
                       f"{objective.steps_per_round} steps, {total} in all; set distill.steps_per_round instead of "
                       f"trainer.max_steps={cfg.trainer.max_steps}")
    cfg.trainer.max_steps = total
    learned = teacher.get("distilled")
    if learned and objective.teacher_steps > int(learned["steps"]):
        raise UdmError(f"the teacher {cfg.teacher} was distilled for {learned['steps']} steps; it cannot teach with "
                       f"distill.teacher_steps={objective.teacher_steps}: set distill.teacher_steps={learned['steps']}")
    return objective


def check_same_distillation(path: Path, distilled: dict | None, objective) -> None:
    """A resumed run continues the same training: a distillation with its method and rounds, a model without one."""
    keys = ("method", "teacher_steps", "steps_per_round", "factor", "states", "norm")
    was = {k: (distilled or {}).get(k) for k in keys}
    if was["method"] == "progressive" and was["factor"] is None:  # written before factor existed: halving rounds
        was["factor"] = 2
    if was["method"]:  # written before states and norm existed: the forward process's states, the squared error
        was["states"], was["norm"] = was["states"] or "forward", was["norm"] or "l2"
    now = {k: getattr(objective, k, None) for k in keys}
    if objective is not None and was["method"]:  # the settings checkpoints record since the power grid, where recorded
        later = {k: v for k, v in held(objective).items() if k in distilled}
        was.update({k: distilled[k] for k in later})
        now.update(later)
    if was != now:
        def say(d):  # the settings that differ
            if not d["method"]:
                return "a model's training (no teacher)"
            named = {"teacher_sampler": "distill.sampler"}
            return ", ".join(f"{named.get(k, k)}={v}" for k, v in d.items() if was.get(k) != now.get(k))
        raise UdmError(f"{path} holds {say(was)}; this command asks for {say(now)}: resume it with the command that "
                       f"started it")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one model; returns the run folder, the last checkpoint and the final sample grid. One udm-train
    at a time per run folder (udm.jobs.run_lock)."""
    check_trainer_steps(cfg.trainer)
    check_schedule(cfg)
    out = Path(cfg.out_dir)
    try:
        with run_lock(out):
            return train_in(cfg)
    except UdmError:  # refused before training: the folder's recorded config is the earlier run's again
        restore_config(out)
        raise
    finally:
        shutil.rmtree(out / PREVIOUS_CONFIG, ignore_errors=True)


def restore_config(out: Path) -> None:
    """Put back the .hydra/ that Hydra overwrote for a command that was refused (udm.callbacks.OutputFolderCheck)."""
    previous = out / PREVIOUS_CONFIG
    if previous.is_dir():
        shutil.copytree(previous, out / ".hydra", dirs_exist_ok=True)


def open_teacher(cfg: DictConfig) -> dict[str, Any] | None:
    """distill=... with teacher=RUN: the teacher's checkpoint, whose process, net and (unless data is given on the
    command line) data the student takes; refused when only one of the two is given, or with process / net keys."""
    teacher, distill = cfg.get("teacher"), cfg.get("distill")
    if not teacher and not distill:
        return None
    if not teacher:
        raise UdmError("distill=... distils a trained model: give its checkpoint or run folder as teacher=RUN")
    if not distill:
        raise UdmError(f"teacher={teacher} names a model to distil: choose how, with distill=progressive or "
                       f"distill=consistency (or experiment=distill_mnist)")
    named = sorted(k for k in command_line_keys() if k.split(".")[0] in ("process", "net"))
    if named:
        raise UdmError(f"a distilled student has its teacher's process and net; {', '.join(named)} cannot apply "
                       f"(drop them, or train a new model without teacher=)")
    checkpoint = load_checkpoint(teacher)
    recipe = checkpoint[CHECKPOINT_KEY]
    if recipe.get("distilled", {}).get("method") == "consistency":
        raise UdmError(f"{teacher} is a consistency model, whose one step is no deterministic inverse step to distil; "
                       f"distil its teacher ({recipe['distilled'].get('teacher')}) instead")
    with open_dict(cfg):
        cfg.process, cfg.net = OmegaConf.create(recipe["process"]), OmegaConf.create(recipe["net"])
        if not any(k.split(".")[0] == "data" for k in command_line_keys()):
            cfg.data = OmegaConf.create(recipe["data"])
    return checkpoint


def student_start(cfg: DictConfig, teacher: dict[str, Any] | None) -> tuple[torch.nn.Module, str] | None:
    """student=RUN: (the net a distillation's student starts from instead of a copy of the teacher, its checkpoint's
    path), e.g. an earlier round's student, taught now by the first teacher; it must have the teacher's process, net
    and data shape. A resumed run checks it too, and continues from its checkpoint's weights."""
    path = cfg.get("student")
    if not path:
        return None
    if teacher is None:
        raise UdmError(f"student={path} sets where a distillation's student starts; it needs teacher=RUN and "
                       f"distill=... (to continue a model's training, use resume=)")
    checkpoint = load_checkpoint(path)
    for key in ("process", "net", "shape"):
        if checkpoint[CHECKPOINT_KEY][key] != teacher[CHECKPOINT_KEY][key]:
            raise UdmError(f"student={path} has another {key} than the teacher {cfg.teacher}; a student starts from "
                           f"weights of the teacher's own process and net")
    return build_from_checkpoint(checkpoint)[1], str(find_checkpoint(path))


def refuse_pretrained_net(net: DictConfig) -> None:
    """A net class that declares itself not trainable (trainable = False: a pretrained diffusers UNet, whose process is
    its scheduler's, not the command line's) is refused rather than trained wrongly."""
    from hydra.utils import get_class

    if not getattr(get_class(net._target_), "trainable", True):
        raise UdmError(f"net={net._target_} is a pretrained net to sample as it is (udm-sample ckpt=DIR); udm-train "
                       f"does not fine-tune it yet, since its process must be the one its scheduler config names; "
                       f"train net=unet instead")


def train_in(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    refuse_pretrained_net(cfg.net)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    teacher = open_teacher(cfg)
    start = student_start(cfg, teacher)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    fill_from_data(cfg.process, datamodule.derived, "process")
    fill_from_data(cfg.net, datamodule.derived, "net")
    check_condition(cfg.net, datamodule.derived, cfg.data.get("condition", "none"))
    objective = None if teacher is None else distillation(cfg, teacher[CHECKPOINT_KEY])
    if teacher is None:
        process, net = instantiate(cfg.process), instantiate(cfg.net)
    else:  # the student starts as the teacher
        if list(datamodule.shape) != list(teacher[CHECKPOINT_KEY]["shape"]):
            raise UdmError(f"the teacher {cfg.teacher} models data of shape {teacher[CHECKPOINT_KEY]['shape']}, "
                           f"these data have shape {list(datamodule.shape)}")
        process, net = build_from_checkpoint(teacher)
        check_taught_grid(teacher[CHECKPOINT_KEY], objective.sampler, process, cfg.teacher)
        net.train()
    parts = process.parts_checkpoint() if process.capabilities.trainable_parts else None
    if parts:  # e.g. the encoding model's stage two: E and D from a stage-one run (the process itself reads no files)
        process.load_parts(load_checkpoint(parts)["state_dict"], str(find_checkpoint(parts)))
    if cfg.get("channels_last"):  # convolutions then run NHWC whatever the input's layout; checkpoints load either way
        net = net.to(memory_format=torch.channels_last)
    if cfg.get("compile"):  # in place: the net's state dict, and so every checkpoint, keeps its plain keys
        net.compile()
    recipe = build_recipe(cfg, datamodule)
    ckpt_path = resume_path(cfg.get("resume"), out.parent)
    resumed_step = None
    if ckpt_path is None:
        refuse_a_used_folder(cfg, out)
    else:
        resumed = load_checkpoint(ckpt_path)
        check_compatible(ckpt_path, resumed[CHECKPOINT_KEY], recipe)
        check_same_distillation(ckpt_path, resumed[CHECKPOINT_KEY].get("distilled"), objective)
        print(f"resuming from {ckpt_path}")
        resumed_step = int(resumed.get("global_step", 0))

    kind, distilling = DiffusionModule, {}
    if objective is not None:
        kind = DistillationModule
        start_net, start_path = start or (None, None)
        distilling = dict(objective=objective, teacher_path=str(find_checkpoint(cfg.teacher)), start_path=start_path,
                          start=None if ckpt_path is not None else start_net)  # resumed: the checkpoint's weights
    module = kind(
        process,
        net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        sampler=instantiate(cfg.sampler),
        val_samples=cfg.val_samples,
        sample_seed=cfg.seed,
        recipe=recipe,
        condition_dropout=cfg.get("condition_dropout", 0.0),
        **distilling,
    )
    if cfg.val_samples or cfg.get("final_samples", 0):  # a sampler that does not fit the process fails now
        module.eval()
        module.generate(datamodule.test[:1])
        module.train()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if resumed_step is not None:  # the resumed run logs the steps from its checkpoint on again: their old rows go
        for logger in loggers:
            if isinstance(logger, KeepingCSVLogger):
                logger.drop_rows_from(resumed_step)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(out))
    for folder in {out, *(Path(c.dirpath) for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None))}:
        check_output_folder(folder, checkpoint_bytes(module), key="hydra.run.dir")
    print(f"udm-train: {process.describe()}, {type(net).__name__} with "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, {len(datamodule.train)} training examples "
          f"of shape {list(datamodule.shape)}; writing to {out}")
    shutil.rmtree(out / PREVIOUS_CONFIG, ignore_errors=True)  # the folder is this run's now
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    result: dict[str, Any] = {"out_dir": str(out)}
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.last_model_path:
        result["checkpoint"] = trainer.checkpoint_callback.last_model_path
    stopper = next((c for c in callbacks if isinstance(c, SaveOnSignal) and c.saved), None)
    if stopper is not None:
        result.update(checkpoint=stopper.saved, stopped=stopper.signum)
        if trainer.is_global_zero:
            print(f"udm-train: stopped at step {trainer.global_step}; checkpoint at {stopper.saved}; "
                  f"continue with the same command and resume={out}")
        return result
    if trainer.is_global_zero and cfg.get("final_samples", 0):
        # after fit the EMA callback has copied the averaged weights into the module
        module.to(trainer.strategy.root_device)
        reference = datamodule.test[: cfg.final_samples].to(module.device)
        written = datamodule.save_samples(module.generate(reference), out / "samples")
        result["samples"] = str(written)
        print(f"udm-train: samples written to {written}")
    if "checkpoint" in result:
        print(f"udm-train: checkpoint at {result['checkpoint']}")
    return result
