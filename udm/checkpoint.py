"""Reading udm checkpoints safely and rebuilding process + net from them (no Lightning import needed).

A udm checkpoint is a Lightning checkpoint whose "udm" entry holds the recipe: the
resolved process and net configs and the data shape. It is read with
torch.load(weights_only=True), which never runs code stored in the file.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from udm.errors import UdmError
from udm.processes import ForwardProcess

CHECKPOINT_KEY = "udm"  # the checkpoint entry holding the recipe (process, net, data, shape, modality, tokenizer)


def find_checkpoint(path: str | Path) -> Path:
    """A .ckpt file as given, or a run folder's checkpoints/last.ckpt."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise UdmError(f"no checkpoint in folder {path} (looked for checkpoints/last.ckpt and last.ckpt)")
    if not path.is_file():
        raise UdmError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = find_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice; the line that matters follows "WeightsUnpickler error:"
        text = str(e).strip()
        reason = (text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines() or [""])[0]
        if "GLOBAL" not in reason:  # not a pickle of objects at all (a text file, random bytes)
            raise UdmError(f"{path} is not a readable checkpoint (truncated or not a torch file: {reason[:200]})") from None
        reason = reason.split(" was not an allowed global")[0].replace("Unsupported global: GLOBAL ", "")
        raise UdmError(f"{path} contains Python objects that udm will not unpickle ({reason[:200]}); nothing in it "
                       f"was run, and it is not a udm checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UdmError(f"{path} is not a readable checkpoint (truncated or not a torch file: {reason[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UdmError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if not isinstance(checkpoint.get(CHECKPOINT_KEY), dict) or "process" not in checkpoint[CHECKPOINT_KEY]:
        raise UdmError(f"{path} is not a udm checkpoint: it has no '{CHECKPOINT_KEY}' recipe of process and net")
    return checkpoint


def recipe_mismatch(saved: dict[str, Any], current: dict[str, Any], partial: bool = False) -> list[str]:
    """The dotted keys where two recipes differ (process, net and data shape).

    partial=True compares only the keys `current` sets (a user naming a few settings).
    """

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    a, b = flat({k: saved.get(k) for k in ("process", "net", "shape")}), flat({k: current.get(k) for k in ("process", "net", "shape")})
    keys = {k for k, v in b.items() if v is not None} if partial else set(a) | set(b)
    return [f"{k}: checkpoint has {a.get(k)!r}, config has {b.get(k)!r}" for k in sorted(keys) if a.get(k) != b.get(k)]


def check_compatible(path: str | Path, saved: dict[str, Any], current: dict[str, Any], partial: bool = False) -> None:
    diffs = recipe_mismatch(saved, current, partial)
    if diffs:
        raise UdmError(f"checkpoint {path} was trained with a different process/net/data:\n  " + "\n  ".join(diffs))


def build_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[ForwardProcess, nn.Module]:
    """The process and the net (with the checkpoint's weights, EMA ones where EMA was on), in eval mode.

    Processes with trainable parts (the encoding model's E and D) get their weights from the
    checkpoint too (state_dict None: the net read its weights itself, udm.models.read_model); config keys ending in `_ckpt` (initial weights read from another file) are
    dropped, since the checkpoint itself holds the trained weights.
    """
    recipe = checkpoint[CHECKPOINT_KEY]
    process_cfg = {k: (None if k.endswith("_ckpt") else v) for k, v in recipe["process"].items()}
    process, net = instantiate(process_cfg), instantiate(recipe["net"])
    if checkpoint["state_dict"] is None:  # a pretrained net that read its own weights (a diffusers folder)
        return process.eval(), net.eval()
    for prefix, module in (("net.", net), ("process.", process)):
        weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        try:
            module.load_state_dict(weights)
        except RuntimeError as e:
            raise UdmError(f"the checkpoint's weights do not fit its {prefix[:-1]} config: {str(e).splitlines()[0]}") from None
    return process.eval(), net.eval()


def recipe_modality(recipe: dict[str, Any]) -> str:
    """What the samples are: the recipe's `modality`; checkpoints written before it was recorded are read off
    their tokenizer and data shape (here, and nowhere else)."""
    if "modality" in recipe:
        return recipe["modality"]
    return "text" if "tokenizer" in recipe else "image" if len(recipe["shape"]) == 3 else "points"


def load_cached(path: Path, fmt: str, the: str, a: str, advice: str) -> dict[str, Any]:
    """A file udm caches (a feature extractor, a fluency judge, Inception statistics) read with weights_only=True:
    its dict when it holds `fmt`, else one UdmError naming it ("cannot read {the} ...", "... is not {a} ...") and
    `advice`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise UdmError(f"cannot read {the} {path} ({type(e).__name__}); {advice}") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise UdmError(f"{path} is not {a} ({fmt}); {advice}")
    return payload
