"""udm's sharing format, what udm-export writes and open_model reads: a folder of two files,

    model.safetensors   the weights a checkpoint's model is rebuilt with, under the checkpoint's own keys:
                        "net.<key>" (EMA weights where the run kept them) and "process.<key>" for processes with
                        trainable parts (the encoding model's E and D)
    udm.yaml            format (udm-export/1), global_step, source (the checkpoint exported) and recipe: the
                        checkpoint's recipe as training wrote it (process, net, shape, modality, data, condition;
                        a text model's tokenizer, whole)

safetensors holds tensors only, so loading the weights runs no code, as udm's torch.load(weights_only=True) of
checkpoints does not. The recipe's data config (paths of the training data) travels as written: a model
samples without it, but metrics and Analytic-DPM that read the data need it where the folder is opened.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from udm.checkpoint import CHECKPOINT_KEY
from udm.errors import UdmError

FORMAT = "udm-export/1"
WEIGHTS, RECIPE = "model.safetensors", "udm.yaml"
PARTS = ("net.", "process.")  # the state dict's keys that rebuild the model (not a distillation's teacher.)


def is_export(path: str | Path) -> bool:
    path = Path(path).expanduser()
    return path.is_dir() and (path / RECIPE).is_file()


def plain(value: Any) -> Any:
    """The recipe as YAML writes it: tuples as lists, everything else as it is."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write_export(out: Path, checkpoint: dict[str, Any], source: Path) -> list[Path]:
    """model.safetensors and udm.yaml of a udm checkpoint into `out` (a new or empty folder), written in a staging
    folder beside it and moved there whole, so a failed export leaves nothing behind. Returns the files."""
    from safetensors.torch import save_file

    weights = {k: v.detach().clone().contiguous() for k, v in checkpoint["state_dict"].items() if k.startswith(PARTS)}
    document = {"format": FORMAT, "global_step": checkpoint.get("global_step"), "source": str(source.resolve()),
                "recipe": plain(checkpoint[CHECKPOINT_KEY])}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.udm-export-{os.getpid()}"
    try:
        staging.mkdir()
        save_file(weights, str(staging / WEIGHTS), metadata={"format": FORMAT})
        (staging / RECIPE).write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
        shutil.copymode(staging / RECIPE, staging / WEIGHTS)  # the user's umask, not safetensors' private 0600
        if out.exists():
            out.rmdir()  # empty: checked before
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / WEIGHTS, out / RECIPE]


def read_export(path: str | Path) -> dict[str, Any]:
    """An export folder as a checkpoint: {"udm": recipe, "state_dict": weights, "global_step": step}."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    try:
        document = yaml.safe_load((folder / RECIPE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UdmError(f"{folder / RECIPE} is not readable ({type(e).__name__}); export the checkpoint again") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("recipe"), dict):
        raise UdmError(f"{folder / RECIPE} is not a udm export ({FORMAT}): it has no format and recipe of udm-export")
    if not (folder / WEIGHTS).is_file():
        raise UdmError(f"{folder} holds {RECIPE} but no {WEIGHTS}; copy the whole exported folder")
    try:
        weights: dict[str, torch.Tensor] = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as e:
        raise UdmError(f"{folder / WEIGHTS} is not readable safetensors (truncated? {str(e)[:200]})") from None
    return {CHECKPOINT_KEY: document["recipe"], "state_dict": weights, "global_step": document.get("global_step")}
