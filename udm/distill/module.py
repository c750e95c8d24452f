"""Distillation trained like any udm model: a DiffusionModule whose loss is a distillation objective.

The student starts as a copy of the teacher's net (or from the weights of `student=RUN`) and trains with Lightning's
loop, optimizer, checkpoints and resume.
Everything the objective keeps besides the student lives in the state dict, so a resumed run continues exactly:
the teacher of the current round (`teacher.*`), the consistency target (`target.*`) and the round itself. Each round
of progressive distillation runs distill.steps_per_round steps (trainer.max_steps is their sum); at its end the
student is written to checkpoints/student-<N>steps.ckpt and becomes the next round's teacher. Every checkpoint's recipe names what the
student was distilled for (`distilled`: method, steps, the sampler it samples with), which udm-sample and udm-eval
read as its default sampler and hold other samplers against (udm.distill.recipe).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from udm.checkpoint import CHECKPOINT_KEY
from udm.distill.progressive import entry
from udm.lit import DiffusionModule


class DistillationModule(DiffusionModule):
    """`objective`: udm.distill.Progressive or Consistency, whose rounds take objective.steps_per_round training
    steps each (trainer.max_steps is their sum); `teacher_path`: the teacher's checkpoint (recorded); the net given is
    the teacher's, which the student copies unless `start` (a net of the same config, from `start_path`) is given."""

    def __init__(self, *args, objective, teacher_path: str, start: torch.nn.Module | None = None,
                 start_path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.teacher_path, self.start_path = objective, teacher_path, start_path
        self.steps_per_round = objective.steps_per_round
        self.total_steps = objective.rounds * objective.steps_per_round
        self.process.requires_grad_(False)  # the teacher's process: a latent one's coder stays the teacher's
        self.teacher = copy.deepcopy(self.net).requires_grad_(False).eval()
        if start is not None:  # the student (and so the consistency target, its EMA) starts elsewhere
            self.net.load_state_dict(start.state_dict())
        self.target = copy.deepcopy(self.net).requires_grad_(False).eval() if objective.needs_target else None
        self.register_buffer("round", torch.zeros((), dtype=torch.long))
        objective.check(self.process)
        self.sampler = self.student_sampler()

    def student_sampler(self):
        """The sampler the current round's student samples with (the validation grids use it too)."""
        return instantiate(self.objective.student_sampler(int(self.round)))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # fixed nets: no dropout in the targets
        if self.target is not None:
            self.target.eval()
        return self

    def diffusion_loss(self, x0, generator=None, cond=None):
        return self.objective.loss(self.process, self.net, self.teacher, x0, int(self.round), generator, cond, self.target)

    def on_train_start(self) -> None:
        self.sampler = self.student_sampler()  # a resumed run's round came with its checkpoint

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.target is not None:  # before any checkpoint of this step is written (callbacks run after)
            self.objective.update_target(self.target, self.net)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        due = min(self.global_step // self.steps_per_round, self.objective.rounds - 1)
        if due != int(self.round):  # the finished round's student teaches the next one
            self.teacher.load_state_dict(self.net.state_dict())
            self.round.fill_(due)
            self.sampler = self.student_sampler()
            self.print(f"udm-train: distillation round {due + 1} of {self.objective.rounds}: "
                       f"{self.objective.steps(due - 1)} teacher steps -> {self.objective.steps(due)}")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step, last = self.global_step, self.steps_per_round * (self.objective.rounds - 1)
        if step == self.total_steps or (step % self.steps_per_round == 0 and step <= last):  # the end of a round
            folder = Path(getattr(self.trainer.checkpoint_callback, "dirpath", None) or
                          Path(self.trainer.default_root_dir) / "checkpoints")
            self.trainer.save_checkpoint(folder / f"student-{self.objective.steps(int(self.round))}steps.ckpt", weights_only=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {**self.recipe, "distilled": {**entry(self.objective, int(self.round)),
                                                                   "teacher": self.teacher_path, "start": self.start_path}}
