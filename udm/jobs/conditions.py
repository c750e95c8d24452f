"""What the sampling jobs were asked to condition on: label=K or labels=all, guidance=w, guidance_interval=[lo, hi]."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, ListConfig
from torch import Tensor

from udm.errors import UdmError
from udm.models import TrainedModel
from udm.samplers import Guidance


def requested_labels(model: TrainedModel, cfg: DictConfig, n: int) -> Tensor | None:
    """The class label of every sample (on the model's device), or None for unconditional sampling.

    label=K: n samples of class K; labels=all: n samples of every class, class by class.
    """
    label, labels = cfg.get("label"), cfg.get("labels")
    if label is None and labels is None:
        if cfg.get("guidance") is not None:
            raise UdmError("guidance steers the samples toward a class: give label=K (or labels=all) with it")
        return None
    if label is not None and labels is not None:
        raise UdmError("give label=K (one class) or labels=all (every class), not both")
    condition = model.condition
    if condition is None or condition.get("kind") != "label":
        raise UdmError(f"{model.checkpoint_path} was trained without class labels, so label, labels and guidance do not "
                       f"apply; train a class-conditional model (data.condition=label, e.g. experiment=mnist_label)")
    classes = int(condition["classes"])
    if labels is not None:
        if labels != "all":
            raise UdmError(f"labels takes 'all' (n samples of every class, one grid row per class), got {labels!r}")
        return torch.arange(classes, device=model.device).repeat_interleave(n)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < classes:
        raise UdmError(f"label={label!r}: this model knows the classes 0..{classes - 1}")
    return torch.full((n,), label, dtype=torch.long, device=model.device)


def batches(starts: Tensor, labels: Tensor | None, size: int) -> list[tuple[Tensor, Tensor | None]]:
    """(x_T, cond) batches of `size`: each start with its label, or with no condition."""
    chunks = starts.split(size)
    return list(zip(chunks, labels.to(starts.device).split(size) if labels is not None else [None] * len(chunks)))


def with_guidance(sampler, cfg: DictConfig):
    """The sampler with guidance=w (and guidance_interval) when asked for; samplers that cannot guide refuse."""
    interval = cfg.get("guidance_interval")
    if cfg.get("guidance") is None:
        if interval is not None:
            raise UdmError("guidance_interval bounds where guidance applies: give guidance=w with it")
        return sampler
    if interval is not None and (not isinstance(interval, (list, tuple, ListConfig)) or len(interval) != 2):
        raise UdmError(f"guidance_interval is [lo, hi] in fractions of T, e.g. guidance_interval=[0.1,0.7]; got {interval!r}")
    scale = cfg.guidance
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise UdmError(f"guidance is a number w >= 0 (1: the conditional model), got {scale!r}")
    return sampler.guided(Guidance(float(scale), tuple(interval) if interval is not None else None))


def describe(cfg: DictConfig) -> str:
    """The file-name part of the request: -label7-w3, -labels-all-w2 ..."""
    part = f"-label{cfg.label}" if cfg.get("label") is not None else "-labels-all" if cfg.get("labels") else ""
    if cfg.get("guidance") is not None:
        part += f"-w{cfg.guidance:g}"
        if cfg.get("guidance_interval") is not None:
            part += f"-in{cfg.guidance_interval[0]:g}-{cfg.guidance_interval[1]:g}"
    return part
