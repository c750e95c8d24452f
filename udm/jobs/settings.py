"""Each console script's own settings, typed: checked before any work, so a wrong type, a missing value or a
number out of range ends in one message naming the key, the value given and what is allowed.

A script's table maps its top-level keys (and a few of its groups', e.g. sampler.steps) to a Setting; keys
that a table does not name are checked where they are used (processes, nets and samplers check their
own arguments when built).
"""

from __future__ import annotations

import os
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
            show = (lambda v: str(v)) if self.kind == "int" else (lambda v: f"{v:g}")
            if self.minimum is not None and self.maximum is not None:
                text += f" in [{show(self.minimum)}, {show(self.maximum)}]"
            elif self.minimum is not None:
                text += f" >= {show(self.minimum)}"
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


def check_like_defaults(cfg: DictConfig, groups: tuple[str, ...], strict: tuple[str, ...] = ()) -> None:
    """Every value of the config groups `groups` (net, process, ... as composed) has the type of the default in
    the YAML file it came from (hydra's runtime choices): a number where the file has a number, true/false where
    it has a bool; in the `strict` groups a whole number where the file has one. One UdmError naming the key."""
    from hydra.core.hydra_config import HydraConfig

    from udm.cli import CONF_DIR

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    for group in groups:
        choice, node = choices.get(group), OmegaConf.select(cfg, group, default=None)
        path = f"{CONF_DIR}/{group}/{choice}.yaml"
        if not choice or not isinstance(node, DictConfig) or not os.path.isfile(path):
            continue
        compare_types(node, OmegaConf.load(path), group, group in strict)


MANY_TYPES = {"trainer.devices"}  # Lightning takes 2, "auto", -1 or [0, 1] alike


def compare_types(node: DictConfig, defaults: DictConfig, prefix: str, strict: bool) -> None:
    for key in defaults:
        if f"{prefix}.{key}" in MANY_TYPES:
            continue
        if key not in node.keys() or OmegaConf.is_missing(node, key) or OmegaConf.is_missing(defaults, key):
            continue
        default_node, value_node = defaults._get_node(key), node._get_node(key)
        if isinstance(default_node, DictConfig) and isinstance(value_node, DictConfig):  # (._value() of one is a dict)
            compare_types(value_node, default_node, f"{prefix}.{key}", strict)
            continue
        default, value = default_node._value(), value_node._value()
        if value is None or isinstance(value, str) and value.startswith("${") or isinstance(default, str) and default.startswith("${"):
            continue  # unset, or an interpolation (resolved where it is used)
        if isinstance(default, bool):
            ok, allowed = isinstance(value, bool), "true or false"
        elif isinstance(default, int) and strict:
            ok, allowed = type(value) is int, "a whole number"
        elif isinstance(default, (int, float)):
            ok, allowed = type(value) in (int, float), "a number"
        else:
            continue
        if not ok:
            raise UdmError(f"{prefix}.{key}={value!r}: {prefix}.{key} is {allowed} (its default is {default!r})")


def whole(what: str, minimum: int | None = None, optional: bool = False, maximum: int | None = None) -> Setting:
    return Setting("int", what, optional, minimum, maximum)


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


SEED_MAX = 2**32 - 1  # what numpy's and torch's generators both take

SAMPLING = {
    "ckpt": path("the checkpoint to sample: a .ckpt file or a run folder"),
    "n": whole("the number of samples", 1),
    "seed": whole("the random seed", 0, maximum=SEED_MAX),
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
    "order": choice("the order tokens are restored in", "random", "confidence", "margin", "entropy", optional=True),
    "block_size": whole("the tokens per block of semi-autoregressive generation", 1, optional=True),
    "top_k": whole("the most likely tokens to draw among", 1, optional=True),
    "top_p": number("the nucleus' probability mass", 0, 1, optional=True),
    "sample_dtype": choice("the precision of token sampling", "float32", "float64", optional=True),
    "author": text("the author to write as", optional=True),
    "authors": choice("n texts for every author", "all", optional=True),
    "label": text("the label to write for", optional=True),
    "labels": choice("n texts for every label", "all", optional=True),
    "title": text("the title to write to", optional=True),
    "metrics": flag("whether to measure the texts"),
    "fluency": flag("whether to measure perplexity under udm's judge"),
    "cache_dir": path("the judges' cache folder", optional=True),
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
    "inception_weights": path("the FID Inception-v3 weights file", optional=True),
    "metric.fid_inception.train_images": whole("the training images of fid_inception's reference statistics", 2),
    "metric.fid_inception.batch_size": whole("the images fid_inception's Inception-v3 reads at once", 1),
}
FEATURES = {
    "data.path": path("the data to train the extractor on", optional=True),
    "extractor.epochs": whole("the extractor's training epochs", 1),
    "extractor.lr": number("the extractor's learning rate", 0),
    "judge.epochs": whole("the judge's training epochs", 1),
    "judge.batch_size": whole("the judge's training batch size", 1),
    "judge.lr": number("the judge's learning rate", 0),
    "cache_dir": path("the feature extractors' cache folder", optional=True),
    "retrain": flag("whether to replace the cached extractor or judge"),
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
EXPORT = {
    "ckpt": path("the checkpoint to export: a .ckpt file or a run folder"),
    "out": path("the folder to export to (new or empty)"),
}
TRAIN = {
    "seed": whole("the random seed", 0, maximum=SEED_MAX),
    "data.path": path("the data to train on", optional=True),  # ??? (image_folder, text_file) is still required
    "data.split_seed": whole("the seed of the held-out split", 0, maximum=SEED_MAX),
    "optimizer.lr": number("the learning rate", 0),
    "trainer.gradient_clip_val": number("the gradient norm clip", 0, optional=True),
    "trainer.limit_val_batches": number("the validation batches (a count, or a fraction of them)", 0, optional=True),
    "callbacks.checkpoint.save_top_k": whole("the checkpoints kept (-1: all)", -1, optional=True),
    "resume": path("the checkpoint or run folder to resume (or last)", optional=True),
    "teacher": path("the teacher's checkpoint or run folder (distillation)", optional=True),
    "val_samples": whole("the samples drawn at each validation", 0),
    "final_samples": whole("the samples drawn after training", 0),
    "channels_last": flag("whether image nets run NHWC"),
    "compile": flag("whether udm-train compiles the net (torch.compile)"),
    "condition_dropout": number("the probability of training with the null condition", 0, 1),
    "data.batch_size": whole("the training batch size", 1),
    "sampler.steps": whole("the validation sampler's steps", 1, optional=True),
    "sampler.eta": number("the validation sampler's eta", 0, 1),
}


TABLES = {"train": TRAIN, "sample": SAMPLE, "generate": GENERATE, "eval": EVALUATE, "features": FEATURES,
          "compare": COMPARE, "export": EXPORT}
GROUPS = {  # the config groups whose values must have their defaults' types; strict: whole numbers stay whole
    "train": (("net", "process", "data", "sampler", "trainer"), ("net", "process", "data", "sampler")),
    "sample": (("sampler", "fast"), ("sampler",)),
    "generate": (("sampler", "fast", "judge"), ("sampler", "judge")),
    "eval": (("sampler", "fast", "judge"), ("sampler", "judge")),
    "features": (("data", "extractor", "judge"), ("data", "extractor", "judge")),
}
OWN_NODES = {"train": ("optimizer", "callbacks")}  # nested settings in the script's own YAML file


def check_script(cfg: DictConfig, script: str) -> None:
    """Everything the console script `script` (the name of its YAML file) can check before any work."""
    from udm.cli import CONF_DIR

    check_settings(cfg, TABLES[script])
    groups, strict = GROUPS.get(script, ((), ()))
    check_like_defaults(cfg, groups, strict)
    own = OmegaConf.load(f"{CONF_DIR}/{script}.yaml")
    for name in OWN_NODES.get(script, ()):
        node, defaults = cfg.get(name), own.get(name)
        if isinstance(node, DictConfig) and isinstance(defaults, DictConfig):
            compare_types(node, defaults, name, strict=False)


def chosen_keys() -> set[str] | None:
    """The command line's keys, or None where no Hydra command line built the config (code calling a job)."""
    from hydra.core.hydra_config import HydraConfig

    return command_line_keys() if HydraConfig.initialized() else None


def command_line_keys() -> set[str]:
    """The keys the user set on the command line (Hydra's task overrides), e.g. {"n", "sampler.steps"}."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task if "=" in o}
