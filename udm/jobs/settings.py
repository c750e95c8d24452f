"""Each console script's own settings, typed: checked before any work, so a wrong type, a missing value or a
number out of range ends in one message naming the key, the value given and what is allowed.

A script's table maps its top-level keys (and a few of its groups', e.g. sampler.steps) to a Setting; keys
that a table does not name are checked where they are used (processes, nets and samplers check their
own arguments when built).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from udm.errors import UdmError


@dataclass(frozen=True)
class Setting:
    """kind: int | number | bool | text | path | choice | list. optional: null allowed. minimum / maximum: bounds of
    numbers (inclusive). choices: the allowed values of a choice. what: what the key means, for the message."""

    kind: str
    what: str
    optional: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()

    def allowed(self) -> str:
        if self.kind == "choice":
            text = " or ".join(map(str, self.choices))
        elif self.kind in ("int", "number"):
            text = "a whole number" if self.kind == "int" else "a number"
            if self.minimum is not None and self.maximum is not None:
                text += f" in [{self.minimum:g}, {self.maximum:g}]"
            elif self.minimum is not None:
                text += f" >= {self.minimum:g}"
        else:
            text = {"bool": "true or false", "text": "text", "path": "a path", "list": "a list, e.g. [a,b]"}[self.kind]
        return text + (" (or null)" if self.optional else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.kind == "int":
            ok = type(value) is int
        elif self.kind == "number":
            ok = type(value) in (int, float) and value == value
        elif self.kind == "bool":
            ok = type(value) is bool
        elif self.kind in ("text", "path"):
            ok = isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip() != ""
        elif self.kind == "choice":
            ok = value in self.choices
        else:  # list
            ok = isinstance(value, (list, tuple, ListConfig))
        if ok and self.kind in ("int", "number"):
            ok = (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
        return ok


def check_settings(cfg: DictConfig, table: dict[str, Setting]) -> None:
    """Raise one UdmError for the first key of `table` whose value in cfg is missing or not allowed; keys the
    config does not have (a group without that option) are skipped."""
    for key, setting in table.items():
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent.keys():  # (`in` is False for a ??? value)
            continue
        if OmegaConf.is_missing(parent, leaf):
            raise UdmError(f"{key} is required ({setting.what}): give {key}=...")
        value = parent[leaf]
        if isinstance(value, DictConfig) or (isinstance(value, ListConfig) and setting.kind != "list"):
            raise UdmError(f"{key} is {setting.what}: {setting.allowed()}, not a group of values")
        if not setting.accepts(value):
            shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            raise UdmError(f"{key}={shown!r}: {key} is {setting.what}, {setting.allowed()}")


def whole(what: str, minimum: int | None = None, optional: bool = False) -> Setting:
    return Setting("int", what, optional, minimum)


def number(what: str, minimum: float | None = None, maximum: float | None = None, optional: bool = False) -> Setting:
    return Setting("number", what, optional, minimum, maximum)


def flag(what: str, optional: bool = False) -> Setting:
    return Setting("bool", what, optional)


def path(what: str, optional: bool = False) -> Setting:
    return Setting("path", what, optional)


def text(what: str, optional: bool = False) -> Setting:
    return Setting("text", what, optional)


def choice(what: str, *choices, optional: bool = False) -> Setting:
    return Setting("choice", what, optional, choices=choices)


SAMPLING = {
    "ckpt": path("the checkpoint to sample: a .ckpt file or a run folder"),
    "n": whole("the number of samples", 1),
    "seed": whole("the random seed", 0),
    "batch_size": whole("the samples drawn at once", 1),
    "device": text("the device: auto, cpu, cuda or cuda:N"),
    "progress": flag("whether to show progress bars"),
    "out_dir": path("the output folder", optional=True),
    "sampler.steps": whole("the number of sampling steps", 1, optional=True),
    "sampler.eta": number("the sampler's eta (0: deterministic, 1: the full posterior noise)", 0, 1),
}
GUIDANCE = {
    "class_prior": flag("whether a cold prior degrades an image of the requested class", optional=True),
    "guidance": number("the guidance scale w", 0, optional=True),
    "guidance_interval": Setting("list", "the guidance interval [lo, hi] in fractions of T", optional=True),
    "guidance_variant": choice("the guidance variant", "cfg", "cfg++"),
    "guide": path("autoguidance's weaker checkpoint", optional=True),
}
SAMPLE = {
    **SAMPLING, **GUIDANCE,
    "label": Setting("text", "the class to sample (its number or name)", optional=True),
    "labels": choice("n samples of every class", "all", optional=True),
    "input": path("the images to restore (a folder or a .npy/.pt file)", optional=True),
    "input_t": whole("the t the input is degraded to", 1, optional=True),
    "degrade_input": flag("whether to degrade the input first"),
    "prior_noise": number("the cold prior's noise", 0, optional=True),
}
GENERATE = {
    **SAMPLING, **GUIDANCE,
    "show": whole("how many texts to print", 0),
    "tokens_per_step": whole("the tokens restored per step", 1),
    "template": text("the template to infill", optional=True),
    "blank": text("the template's blank character"),
    "temperature": number("the sampling temperature", 0, optional=True),
    "order": choice("the order tokens are restored in", "random", "confidence", optional=True),
    "author": text("the author to write as", optional=True),
    "authors": choice("n texts for every author", "all", optional=True),
    "label": text("the label to write for", optional=True),
    "labels": choice("n texts for every label", "all", optional=True),
    "title": text("the title to write to", optional=True),
    "metrics": flag("whether to measure the texts"),
}
EVALUATE = {
    **SAMPLING, **GUIDANCE,
    "label": Setting("text", "the class to sample (its number or name)", optional=True),
    "labels": choice("samples cycling through every class", "all", optional=True),
    "devices": whole("the sampling processes per node", 1),
    "num_nodes": whole("the nodes", 1),
    "bpd_samples": whole("the held-out images for bits/dim", 0),
    "nelbo_samples": whole("the held-out texts for the token NELBO", 0),
    "kid_subsets": whole("KID's subsets", 1),
    "kid_subset_size": whole("KID's subset size", 2),
    "cache_dir": path("the feature extractors' cache folder", optional=True),
}
FEATURES = {
    "cache_dir": path("the feature extractors' cache folder", optional=True),
    "retrain": flag("whether to replace the cached extractor"),
    "device": text("the device: auto, cpu, cuda or cuda:N"),
    "progress": flag("whether to show progress bars"),
}
COMPARE = {
    "dir": path("the folder to compare: a sweep, a folder of runs, one run or eval JSONs"),
    "out_dir": path("the output folder", optional=True),
    "name": text("the report's file name"),
    "title": text("the report's heading", optional=True),
    "panel_images": whole("the samples shown per run", 1, optional=True),
}
TRAIN = {
    "seed": whole("the random seed", 0),
    "resume": path("the checkpoint or run folder to resume (or last)", optional=True),
    "val_samples": whole("the samples drawn at each validation", 0),
    "final_samples": whole("the samples drawn after training", 0),
    "channels_last": flag("whether image nets run NHWC"),
    "condition_dropout": number("the probability of training with the null condition", 0, 1),
    "data.batch_size": whole("the training batch size", 1),
    "sampler.steps": whole("the validation sampler's steps", 1, optional=True),
    "sampler.eta": number("the validation sampler's eta", 0, 1),
}
