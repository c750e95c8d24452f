"""What udm-eval scores: metrics as small objects, one YAML file each in the config group `metric`.

A metric is a class (anywhere importable) and a file `metric/<name>.yaml` in a Hydra config folder, whose
`_target_` names the class and whose other keys are the flat keyword arguments it is built from:

    # udm/conf/metric/mean_pixel.yaml                # (or <folder>/metric/, with hydra.searchpath=[file://<folder>])
    _target_: mypackage.MeanPixel
    scale: 1.0

    class MeanPixel(Metric):
        columns = ("mean_pixel",)                                     # the JSON keys it writes
        table = (Row("mean_pixel", "mean pixel", "{:.3f}", note="of {n} samples"),)  # how it shows in the tables
        def __init__(self, scale: float = 1.0): self.scale = scale
        def why_not(self, model, context): return None if model.modality == "image" else "mean pixel is for images"
        def compute(self, model, samples, context): return {"mean_pixel": self.scale * float(samples.mean())}

and that is all: udm-eval scores it (`metrics=null`: with every other metric that applies; `metrics=[mean_pixel]`:
alone), writes its columns into the JSON and its rows into its table, and udm-compare gives each row a column.
Its settings are the YAML's keys: `+metric.mean_pixel.scale=2` sets one for one evaluation; a YAML value may
interpolate a key of the eval config (the built-in ones read the documented `bpd_samples=...`, `kid_subsets=...`).

The set of metrics is the set of these files, found in the config sources of the running Hydra app (udm's own
conf folder first, then hydra.searchpath; the first file of a name wins); nothing else lists them.
"""

from __future__ import annotations

import copy
import importlib
import math
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from udm.errors import UdmError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from udm.models import TrainedModel

GROUP = "metric"  # the config group: <config folder>/metric/<name>.yaml


@dataclass(frozen=True)
class Row:
    """One line of udm-eval's table (and one column of udm-compare's) for the JSON key `key`, shown when present.

    fmt formats the value; note is a str.format template over the whole result (a missing or null key shows
    as —); compare_label / compare_fmt: udm-compare's header and format where they differ from label / fmt.
    """

    key: str
    label: str
    fmt: str = "{}"
    note: str = ""
    compare_label: str | None = None
    compare_fmt: str | None = None

    def note_for(self, result: dict[str, Any]) -> str:
        return _Notes().vformat(self.note, (), result)


def fmt(value: Any, spec: str = "{}") -> str:
    """A value as the tables show it: — for null, nan for NaN, else spec.format(value) (str(value) when that fails)."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


class _Notes(string.Formatter):
    def get_value(self, key, args, kwargs):
        return kwargs.get(key)

    def format_field(self, value, format_spec):
        return "—" if value is None else super().format_field(value, format_spec)


@dataclass
class Context:
    """What the metrics of one evaluation share: the eval config (n, seed, batch_size, progress, cache_dir,
    extractor, ...), the checkpoint's held-out data, the device the model is on, a scratch dict for
    things worth computing once per evaluation (the FID feature extractor, which fid and kid both use), and
    the conditions the samples were drawn for."""

    cfg: DictConfig
    data: Any
    device: torch.device | str = "cpu"
    shared: dict[str, Any] = field(default_factory=dict)
    conditions: Any = None  # the class label each sample was drawn for (labels=all), else None

    @property
    def n(self) -> int:
        return int(self.cfg.n)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.batch_size)

    @property
    def progress(self) -> bool:
        return bool(self.cfg.get("progress", False))


class Metric:
    """A score of a trained model's samples (and, for likelihoods, of its held-out data).

    name     its YAML file's name (fid, kid, ...), set when it is loaded
    columns  the JSON keys compute writes (it may write fewer, never others)
    table    how those show in udm-eval's table and udm-compare's columns (Row), in order
    order    where it sorts among the metrics (table rows, JSON keys); then by name
    """

    name: str = ""
    columns: tuple[str, ...] = ()
    table: tuple[Row, ...] = ()
    order: int = 100

    def why_not(self, model: TrainedModel, context: Context) -> str | None:
        """Why this metric does not apply to the model, its data and the settings (None: it applies).
        metrics=null skips a metric that does not apply; naming it is an error that shows this reason."""
        return None

    def check(self, model: TrainedModel, context: Context) -> None:
        """Raise UdmError when the metric applies but this request cannot be scored (checked before sampling)."""

    def compute(self, model: TrainedModel, samples: Tensor, context: Context) -> dict[str, Any]:
        """The scores of `samples` (on the CPU; the model is on context.device): a flat dict of `columns`."""
        raise NotImplementedError

    @classmethod
    def compare_note(cls, results: list[dict[str, Any]]) -> str | None:
        """A sentence for udm-compare's report about these eval results (e.g. which feature extractor), or None."""
        return None


# -- the registry: the YAML files of the metric group ----------------------------------------------------------


def config_sources(cfg: DictConfig | None = None) -> list[tuple[str, str]]:
    """(scheme, path) of every config source, in Hydra's search order: cfg's own hydra node (a config composed
    with return_hydra_config), else the running app's HydraConfig, else udm's conf folder; udm's conf folder is
    always among them."""
    from hydra.core.hydra_config import HydraConfig

    from udm.cli import CONF_DIR

    sources = OmegaConf.select(cfg, "hydra.runtime.config_sources", default=None) if cfg is not None else None
    if sources is None and HydraConfig.initialized():
        sources = HydraConfig.get().runtime.config_sources
    found = [(str(s.schema), str(s.path)) for s in sources or []]
    if not any(scheme == "file" and Path(path).resolve() == Path(CONF_DIR) for scheme, path in found):
        found.append(("file", CONF_DIR))
    return found


def metric_files(cfg: DictConfig | None = None) -> dict[str, Any]:
    """name -> the YAML file (a Path or an importlib resource) of every metric in the config sources."""
    files: dict[str, Any] = {}
    for scheme, path in config_sources(cfg):
        if scheme == "file":
            folder: Any = Path(path) / GROUP
        elif scheme == "pkg":
            try:
                folder = resources.files(path.replace("/", ".")) / GROUP
            except (ModuleNotFoundError, TypeError):
                continue
        else:  # structured:// (dataclasses): no YAML
            continue
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir(), key=lambda f: f.name):
            if file.name.endswith(".yaml") and file.is_file():
                files.setdefault(file.name.removesuffix(".yaml"), file)
    return files


def _spec(file) -> DictConfig:
    return OmegaConf.create(file.read_text(encoding="utf-8") or "{}")


def metric_classes(cfg: DictConfig | None = None, strict: bool = True) -> dict[str, type[Metric]]:
    """name -> metric class of every metric YAML, in table order (the class's `order`, then the name); a YAML
    whose class cannot be imported is an error, or left out when not strict (udm-compare: no column for it)."""
    classes = {}
    for name, file in metric_files(cfg).items():
        try:
            target = _spec(file).get("_target_")
            if not target:
                raise UdmError(f"the metric config {file} has no _target_ naming its class")
            module, _, attr = str(target).rpartition(".")
            try:
                classes[name] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError, ValueError) as e:
                raise UdmError(f"the metric config {file} names {target}, which cannot be imported ({e})") from None
        except Exception:
            if strict:
                raise
    return dict(sorted(classes.items(), key=lambda item: (item[1].order, item[0])))


def load_metrics(cfg: DictConfig, names: list[str] | None = None) -> list[Metric]:
    """The metrics `names` (all when None), built from their YAML files: interpolations resolve against the
    eval config `cfg`, and cfg.metric.<name> (set with +metric.<name>.<key>=value) goes over the file's keys.
    An unknown name is an error that lists the known ones."""
    files = metric_files(cfg)
    if names is None:
        names = list(metric_classes(cfg))
    unknown = [n for n in names if n not in files]
    if unknown:
        raise UdmError(f"unknown metric(s) {', '.join(map(str, unknown))}; choose from {', '.join(metric_classes(cfg))} "
                       f"(e.g. metrics=[fid,kid]), or metrics=null for all that apply")
    metrics = []
    for name in names:
        spec = _spec(files[name])
        extra = OmegaConf.select(cfg, f"{GROUP}.{name}", default=None)
        if extra is not None:
            spec = OmegaConf.merge(spec, extra)
        holder = copy.copy(cfg)  # the spec inside (a copy of) the eval config, so that ${bpd_samples} resolves
        with open_dict(holder):
            holder[GROUP] = {name: spec}
        metric = instantiate(holder[GROUP][name], _convert_="all")
        if not isinstance(metric, Metric):
            raise UdmError(f"metric {name}: {spec._target_} is not a udm.metrics.Metric")
        metric.name = name
        metrics.append(metric)
    return metrics
