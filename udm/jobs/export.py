"""export(cfg): a udm checkpoint -> its sharing format (udm.exported): OUT/model.safetensors + OUT/udm.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from udm.checkpoint import CHECKPOINT_KEY, build_from_checkpoint
from udm.diffusers_folder import is_diffusers_folder
from udm.errors import UdmError
from udm.exported import is_export, write_export
from udm.jobs.outputs import check_output_folder
from udm.models import read_model


def check_out(out: Path) -> None:
    """out must be a new or an empty folder: nothing the user had there is overwritten or mixed with the export."""
    if out.exists() and not out.is_dir():
        raise UdmError(f"out={str(out)!r} is a file; udm-export writes a folder: choose a new or empty one")
    if out.is_dir() and any(out.iterdir()):
        raise UdmError(f"out={str(out)!r} already holds files; udm-export writes only into a new or empty folder, so "
                       f"nothing there is lost: choose another out")


def export(cfg: DictConfig) -> dict[str, Any]:
    out = Path(str(cfg.out)).expanduser()
    check_out(out)
    if is_export(cfg.ckpt) or is_diffusers_folder(cfg.ckpt):
        kind = "udm export" if is_export(cfg.ckpt) else "diffusers folder"
        raise UdmError(f"ckpt={cfg.ckpt} is already a {kind}, which udm-sample ckpt=... reads as it is; copy the "
                       f"folder to share it")
    source, checkpoint = read_model(cfg.ckpt)  # a udm checkpoint, or one message saying why it is not one
    build_from_checkpoint(checkpoint)  # the weights fit the recipe: what is written is a model that opens
    check_output_folder(out.parent, need_bytes=sum(v.numel() * v.element_size() for v in checkpoint["state_dict"].values()),
                        key="out")
    check_out(out)  # (again: nothing appeared meanwhile)
    files = write_export(out, checkpoint, source)
    recipe = checkpoint[CHECKPOINT_KEY]
    print(f"udm-export: {source} ({recipe['process'].get('_target_')}, {recipe['net'].get('_target_')}) written to {out}")
    print(f"udm-export: sample it with udm-sample ckpt={out}" if recipe.get("modality") != "text"
          else f"udm-export: generate with udm-generate ckpt={out}")
    return {"out": str(out), "files": [str(f) for f in files], "source": str(source)}
