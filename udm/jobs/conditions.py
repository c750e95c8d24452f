"""What the sampling jobs were asked to condition on: label=K or labels=all, guidance=w, guidance_interval=[lo, hi],
guidance_variant=cfg|cfg++ and guide=CKPT (autoguidance)."""

from __future__ import annotations

import difflib

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from udm.checkpoint import find_checkpoint
from udm.errors import UdmError
from udm.models import TrainedModel, open_model
from udm.samplers import Guidance


CLASS_KINDS = ("label", "author")  # conditions that are one class per sample (an author is a class of poems)


def requested_labels(model: TrainedModel, cfg: DictConfig, n: int) -> Tensor | None:
    """The class label of every sample (on the model's device), or None for unconditional sampling.

    label=K: n samples of class K; labels=all: n samples of every class, class by class.
    """
    label, labels = cfg.get("label"), cfg.get("labels")
    if label is None and labels is None:
        if cfg.get("guidance") is not None and cfg.get("guide") is None:
            raise UdmError("guidance steers the samples toward a class: give label=K (or labels=all) with it "
                           "(or guide=CKPT: autoguidance by a weaker model, with or without a class)")
        return None
    if label is not None and labels is not None:
        raise UdmError("give label=K (one class) or labels=all (every class), not both")
    condition = model.condition
    if condition is None or condition.get("kind") not in CLASS_KINDS:
        trained = f"with data.condition={condition['kind']} (udm-generate {condition['kind']}=...)" if condition else "without class labels"
        raise UdmError(f"{model.checkpoint_path} was trained {trained}, so label and labels do not apply; train a "
                       f"class-conditional model (data.condition=label, e.g. experiment=mnist_label)")
    classes = int(condition["classes"])
    if labels is not None:
        if labels != "all":
            raise UdmError(f"labels takes 'all' (n samples of every class, one grid row per class), got {labels!r}")
        return torch.arange(classes, device=model.device).repeat_interleave(n)
    if isinstance(label, str) and condition.get("names"):  # a class by name: label=cat for an image folder's cat/
        label = class_index([str(n) for n in condition["names"]], label, "label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < classes:
        names = f" ({', '.join(map(str, condition['names']))})" if condition.get("names") else ""
        raise UdmError(f"label={label!r}: this model knows the classes 0..{classes - 1}{names}")
    return torch.full((n,), label, dtype=torch.long, device=model.device)


def class_index(names: list[str], value: str, kind: str) -> int:
    """The index of `value` among the model's classes; an unknown one names the closest known ones."""
    if value in names:
        return names.index(value)
    close = difflib.get_close_matches(value, names, n=3, cutoff=0.0)
    raise UdmError(f"{kind}={value!r} is not one this model knows; closest: {', '.join(close)} "
                   f"(all {len(names)}: {', '.join(names)})")


def prior_labels(model: TrainedModel, cfg: DictConfig, labels: Tensor | None) -> Tensor | None:
    """The labels the prior is drawn for: where x_T depends on the data (cold processes: D_T of a held-out image)
    and labels are asked for, x_T comes from an image of the requested class unless class_prior=false; elsewhere
    class_prior does not apply and setting it is refused."""
    asked = cfg.get("class_prior")
    applies = labels is not None and model.process.capabilities.prior_needs_data
    if not applies:
        if asked is not None:
            why = "no class is asked for (label / labels)" if labels is None else \
                f"the prior of {model.process.describe()} does not depend on the data"
            raise UdmError(f"class_prior chooses the held-out image a cold prior degrades; it does not apply here: {why}")
        return None
    return labels if asked is None or asked else None


def batches(starts: Tensor, labels: Tensor | None, size: int) -> list[tuple[Tensor, Tensor | None]]:
    """(x_T, cond) batches of `size`: each start with its label, or with no condition."""
    chunks = starts.split(size)
    return list(zip(chunks, labels.to(starts.device).split(size) if labels is not None else [None] * len(chunks)))


def with_guidance(sampler, cfg: DictConfig, model: TrainedModel | None = None, wrap=None):
    """The sampler with guidance=w (guidance_interval, guidance_variant, guide) when asked for; samplers that cannot
    guide refuse. guide=CKPT (autoguidance) is opened beside `model` and its net handed through `wrap` (the jobs'
    `fast` wrapper), as the main net is; with `model` the guided sampler is checked against its process now."""
    interval, variant, guide = cfg.get("guidance_interval"), cfg.get("guidance_variant") or "cfg", cfg.get("guide")
    if cfg.get("guidance") is None:
        for given, what in ((interval is not None, "guidance_interval bounds where guidance applies"),
                            (variant != "cfg", "guidance_variant chooses how guidance re-corrupts"),
                            (guide is not None, "guide (autoguidance) replaces the unconditional branch of guidance")):
            if given:
                raise UdmError(f"{what}: give guidance=w with it")
        return sampler
    if getattr(sampler, "guidance", None) is not None:
        raise UdmError("the sampler config already guides (sampler.guidance); give guidance either there or as guidance=w, "
                       "not both")
    if interval is not None and (not isinstance(interval, (list, tuple, ListConfig)) or len(interval) != 2
                                 or not all(type(v) in (int, float) for v in interval)):
        raise UdmError(f"guidance_interval is [lo, hi] in fractions of T, e.g. guidance_interval=[0.1,0.7]; got {interval!r}")
    scale = cfg.guidance
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise UdmError(f"guidance is a number w >= 0 (1: the conditional model), got {scale!r}")
    guidance = Guidance(float(scale), tuple(interval) if interval is not None else None, variant=str(variant))
    if guide is not None:
        if model is None:
            raise UdmError("guide= is autoguidance from another checkpoint, which this command does not take")
        weak = open_guide(model, str(guide))
        guidance.guide = wrap(weak.net) if wrap is not None else weak.net
        guidance.guide_conditional = weak.condition is not None
    guided = sampler.guided(guidance)
    if model is not None:
        guided.check(model.process)
    return guided


def open_guide(model: TrainedModel, path: str) -> TrainedModel:
    """Autoguidance's weaker model (Karras et al. 2024): another checkpoint, on the model's device, whose
    predictions mix with the model's. It must make the same samples through the same process (config and any
    trained parts of it, such as the encoding model's E and D), so that the two predictions are of one x0; its
    net may differ (a smaller one, or an early checkpoint of the same run). A conditional guide must know the
    same condition (it is called with it); an unconditional one is called without."""
    guide = open_model(path, model.device)
    ours, theirs = f"ckpt={model.checkpoint_path}", f"guide={guide.checkpoint_path}"
    if guide.modality != model.modality or guide.shape != model.shape:
        raise UdmError(f"autoguidance needs a guide of the same samples: {theirs} makes {guide.modality} of shape "
                       f"{guide.shape}, {ours} makes {model.modality} of shape {model.shape}")
    mine, other = (process_recipe(m) for m in (model, guide))
    differ = sorted(k for k in mine.keys() | other.keys() if mine.get(k) != other.get(k))
    if differ or not same_weights(model.process.state_dict(), guide.process.state_dict()):
        what = ("" if "_target_" in differ else f" (differing in {', '.join(differ)})" if differ
                else " (its trained parts hold other weights)")
        raise UdmError(f"autoguidance needs a guide trained with the same process: {theirs} has "
                       f"{guide.process.describe()}, {ours} has {model.process.describe()}{what}")
    if model.recipe.get("tokenizer") != guide.recipe.get("tokenizer"):
        raise UdmError(f"autoguidance mixes the two models' token probabilities id by id, but {theirs} has another "
                       f"tokenizer than {ours}; guide with a model trained on the same text")
    if guide.condition is not None and guide.condition != model.condition:
        raise UdmError(f"{theirs} was trained with the condition {guide.condition}, {ours} with {model.condition}; "
                       f"a conditional guide must know the model's condition (an unconditional guide also works)")
    return guide


def process_recipe(model: TrainedModel) -> dict:
    """The process config as the process is built from it (keys ending in _ckpt, initial weights, dropped)."""
    return {k: v for k, v in model.recipe["process"].items() if not k.endswith("_ckpt")}


def same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def describe(cfg: DictConfig) -> str:
    """The file-name part of the request: -label7-w3, -labels-all-w2, -label7-w2-cfgpp, -label7-w2-auto ..."""
    part = f"-label{cfg.label}" if cfg.get("label") is not None else "-labels-all" if cfg.get("labels") else ""
    part += "-anyprior" if cfg.get("class_prior") is False else ""
    return part + describe_guidance(cfg)


def guidance_settings(cfg: DictConfig) -> dict:
    """The guidance a job samples under, from guidance=w (guidance_interval, guidance_variant, guide) or from the
    sampler config (sampler.guidance: a udm.samplers.Guidance): {} without guidance; what the JSONs record."""
    in_sampler = OmegaConf.select(cfg, "sampler.guidance", default=None)
    if cfg.get("guidance") is None and isinstance(in_sampler, DictConfig):
        source = {"guidance": in_sampler.get("scale", 1.0), "guidance_interval": in_sampler.get("interval"),
                  "guidance_variant": in_sampler.get("variant")}
    elif cfg.get("guidance") is not None:
        source = {k: cfg.get(k) for k in ("guidance", "guidance_interval", "guidance_variant")}
        if cfg.get("guide") is not None:
            source["guide"] = str(find_checkpoint(cfg.guide).resolve())
    else:
        return {}
    source["guidance_variant"] = source.get("guidance_variant") or "cfg"
    interval = source.get("guidance_interval")
    source["guidance_interval"] = [float(v) for v in interval] if interval is not None else None
    return {k: v for k, v in source.items() if v is not None}


def describe_guidance(cfg: DictConfig) -> str:
    """The guidance part of a file name: -w3, -w3-in0.1-0.7, -w2-cfgpp, -w2-auto (empty without guidance), for
    guidance=w and for guidance in the sampler config alike."""
    settings = guidance_settings(cfg)
    part = ""
    if settings:
        part += f"-w{settings['guidance']:g}"
        if settings.get("guidance_interval") is not None:
            part += f"-in{settings['guidance_interval'][0]:g}-{settings['guidance_interval'][1]:g}"
        if settings["guidance_variant"] == "cfg++":
            part += "-cfgpp"
        if settings.get("guide") is not None:  # which checkpoint guided: the JSONs record it (guide)
            part += "-auto"
    return part
