"""One way to open a trained model: a checkpoint file, run folder, export folder (udm-export) or pretrained diffusers
folder -> process, net, recipe, modality, data,
decoding and saving of samples, and a sampler made ready for it. udm-sample, udm-generate, udm-eval and the
experiments all open checkpoints here; nothing here imports Lightning.

    model = open_model("runs/mnist-gaussian/<run>", device="cpu")   # or an export folder, or a diffusers folder
    sampler = model.sampler(udm.samplers.DDIM(steps=50))
    x0 = sampler(model.process, model.net, model.prior(16, generator), generator=generator)
    model.save_samples(x0, "samples/ddim")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from udm.checkpoint import CHECKPOINT_KEY, build_from_checkpoint, check_compatible, find_checkpoint, load_checkpoint, recipe_modality
from udm.diffusers_folder import diffusers_recipe, is_diffusers_folder
from udm.errors import UdmError
from udm.exported import is_export, read_export
from udm.processes import ForwardProcess


MODEL_OF = {"image": "an image model", "text": "a text model", "points": "a model of points"}


def pick_device(name: str | torch.device) -> torch.device:
    """'auto' (CUDA when available, else CPU) or a torch device name, checked before anything is loaded on it."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UdmError(f"device={name!r} is not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UdmError(f"device={name} asks for CUDA, which this machine (or this torch build) does not have; use device=cpu")
    return device


@dataclass
class TrainedModel:
    """A trained process and net on a device, with the recipe they were trained from.

    modality: 'image' ([C, H, W] in [-1, 1]), 'text' (token ids, decoded by the checkpoint's tokenizer) or
    'points'. `data(stage)` builds the checkpoint's data module (held-out references, training rows for
    Analytic-DPM, the training text for copy rates) only when asked.
    """

    checkpoint_path: Path
    recipe: dict[str, Any]
    process: ForwardProcess
    net: nn.Module
    device: torch.device
    global_step: int | None = None
    progress: bool = False
    _data: dict[str, Any] = field(default_factory=dict, repr=False)

    def to(self, device: str | torch.device) -> TrainedModel:
        """Move process and net to `device` ('auto', 'cpu', 'cuda:1', ...)."""
        self.device = pick_device(device)
        self.process.to(self.device), self.net.to(self.device)
        return self

    @property
    def modality(self) -> str:
        return recipe_modality(self.recipe)

    @property
    def condition(self) -> dict | None:
        """The condition the model was trained with, e.g. {"kind": "label", "classes": 10}; None: unconditional."""
        return self.recipe.get("condition")

    @property
    def shape(self) -> list[int]:
        return list(self.recipe["shape"])

    @property
    def run_dir(self) -> Path:
        """The run folder: the checkpoint's folder's parent for <run>/checkpoints/last.ckpt. An export or diffusers
        folder is a model someone shared (or a hub cache snapshot), not a run: what is made from it (samples/,
        eval/) goes to runs/pretrained/<its name> under the working directory, never into that folder."""
        path = self.checkpoint_path.resolve()
        return Path("runs", "pretrained", path.name).resolve() if path.is_dir() else path.parent.parent

    def data(self, stage: str = "test"):
        """The checkpoint's data module, set up for `stage` ('fit' gives train and test)."""
        if "data" not in self.recipe:
            raise UdmError(f"{self.checkpoint_path} is a pretrained model that carries no data of its own (held-out "
                           f"images for metrics, training images for Analytic-DPM); what needs them cannot run on it")
        if stage not in self._data:
            data = instantiate(self.recipe["data"])
            data.setup(stage)
            self._data[stage] = data
        return self._data[stage]

    def tokenizer(self):
        if self.modality != "text":
            raise UdmError(f"{self.checkpoint_path} holds {MODEL_OF[self.modality]}, which has no tokenizer")
        from udm.data.tokenizers import tokenizer_from_state

        if "_tokenizer" not in self._data:
            self._data["_tokenizer"] = tokenizer_from_state(self.recipe["tokenizer"])
        return self._data["_tokenizer"]

    def decode(self, samples: Tensor) -> list[str]:
        """Token ids [N, L] -> texts with the checkpoint's own tokenizer (special tokens shown; a variable-length
        text ends at its end token, padding left out: udm.data.tokenizers.decode)."""
        from udm.data.tokenizers import decode

        tok = self.tokenizer()
        return [decode(tok, row) for row in samples.tolist()]

    def references(self, n: int, labels: Tensor | None = None) -> Tensor:
        """n x0 batches fixing the samples' shape, on the device: held-out data where the prior depends on it
        (a fixed random draw, seed 0; with `labels`, sample i's reference is a held-out image of class labels[i],
        so a cold prior D_T(x0) carries no other class's trace), else zeros (token ids for text)."""
        if self.process.capabilities.prior_needs_data:
            data = self.data("test")
            pick = torch.Generator().manual_seed(0)
            if labels is None:
                return data.test[torch.randint(0, len(data.test), (n,), generator=pick)].to(self.device)
            if getattr(data, "test_cond", None) is None:
                raise UdmError(f"{self.checkpoint_path}'s held-out data carry no labels to draw a class's prior from")
            labels = labels.cpu()
            idx = torch.empty(n, dtype=torch.long)
            for label in labels.unique().tolist():
                where, pool = (labels == label).nonzero().squeeze(1), (data.test_cond == label).nonzero().squeeze(1)
                if len(pool) == 0:
                    raise UdmError(f"the held-out data hold no image of class {label} to draw its prior from")
                idx[where] = pool[torch.randint(0, len(pool), (len(where),), generator=pick)]
            return data.test[idx].to(self.device)
        dtype = torch.long if self.modality == "text" else torch.get_default_dtype()
        return torch.zeros(n, *self.shape, dtype=dtype, device=self.device)

    def prior(self, n: int, generator: torch.Generator | None = None, batch_size: int = 256,
              labels: Tensor | None = None) -> Tensor:
        """x_T ~ p(x_T) for n samples (of the classes `labels` where the prior depends on the data), drawn batch
        by batch as the jobs do."""
        return torch.cat([self.process.prior(batch, generator) for batch in self.references(n, labels).split(batch_size)])

    def sampler(self, sampler):
        """`sampler` (an object, or a Hydra config of one) checked against the process and made ready for
        this model (Analytic-DPM estimates or reads its moments here, with the float32 net)."""
        from udm.distill.recipe import check_student

        if not callable(sampler):
            sampler = instantiate(sampler)
        check_student(self.recipe, sampler, self.process)  # a distilled student holds samplers to what it learned
        return sampler.prepare(self.process, self.net, self)

    def with_data(self, data_cfg: dict[str, Any]) -> TrainedModel:
        """A pretrained model without data of its own (a diffusers folder) given the data its metrics need; its images
        must have the model's shape. A udm checkpoint carries its training data, which this would contradict."""
        if "data" in self.recipe:
            raise UdmError(f"{self.checkpoint_path} carries the data it was trained on ({self.recipe['data'].get('_target_')}); "
                           f"data= is for a pretrained model without data of its own (a diffusers folder)")
        data = instantiate(data_cfg)
        data.setup("test")
        if list(data.shape) != self.shape:
            raise UdmError(f"data={data_cfg.get('_target_')} holds {list(data.shape)} samples, and the model at "
                           f"{self.checkpoint_path} makes {self.shape}; set data.image_size / data.channels to match")
        self.recipe = {**self.recipe, "data": dict(data_cfg)}
        self._data["test"] = data
        return self

    def save_samples(self, samples: Tensor, path: str | Path, nrow: int | None = None) -> Path:
        """The samples as people look at them: a PNG grid of images, the texts one per line (.txt), or the
        data's own plot; `path` without suffix. Returns the file written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.modality == "image":
            from udm.grid import save_grid

            return save_grid(samples, path.with_suffix(".png"), nrow=nrow)
        if self.modality == "text":
            path = path.with_suffix(".txt")
            path.write_text("\n".join(self.decode(samples)) + "\n", encoding="utf-8")
            return path
        return instantiate(self.recipe["data"]).save_samples(samples, path)


def read_model(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Where a model is read from and its checkpoint, {"udm": recipe, "state_dict": weights, "global_step": step}:
    a udm checkpoint (a .ckpt, or a run folder's checkpoints/last.ckpt), a folder written by udm-export
    (udm.exported), or a pretrained diffusers UNet's folder (udm.diffusers_folder; state_dict None: the net reads
    its own weights)."""
    if is_export(path):
        return Path(path).expanduser(), read_export(path)
    if is_diffusers_folder(path):
        return Path(path).expanduser(), {CHECKPOINT_KEY: diffusers_recipe(path), "state_dict": None}
    ckpt_path = find_checkpoint(path)
    return ckpt_path, load_checkpoint(ckpt_path)


def open_model(path: str | Path, device: str | torch.device = "cpu", expect: str | None = None, check: dict | None = None,
               progress: bool = False) -> TrainedModel:
    """Open a model (a .ckpt, a run folder, an export folder or a diffusers folder: read_model) on `device`, in
    eval mode.

    expect: the modality the caller works with ('image', 'text', ...): another one is refused with a message
    that names the right command. check: process / net settings the user named, compared with the recipe.
    """
    ckpt_path, checkpoint = read_model(path)
    recipe = checkpoint[CHECKPOINT_KEY]
    modality = recipe_modality(recipe)
    if expect is not None and modality not in ([expect] if isinstance(expect, str) else expect):
        tool = "udm-generate" if modality == "text" else "udm-sample"
        raise UdmError(f"{ckpt_path} holds {MODEL_OF[modality]} ({recipe['process'].get('_target_')}); use {tool} ckpt={path}")
    if check:
        check_compatible(ckpt_path, recipe, check, partial=True)
    device = pick_device(device)
    process, net = build_from_checkpoint(checkpoint)
    process.to(device), net.to(device)
    return TrainedModel(ckpt_path, recipe, process, net, device, checkpoint.get("global_step"), progress)
