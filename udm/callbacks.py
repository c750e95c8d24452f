"""What makes a training run survive being stopped: whole checkpoints, saved RNG, a save on SIGTERM/Ctrl-C.

* `AtomicCheckpointIO` (a Trainer plugin) writes every checkpoint beside its target and renames
  it into place, so a kill at any moment leaves the previous checkpoint whole.
* `RNGState` stores the global RNG states in each checkpoint and keeps validation from moving
  them, so a run resumed from a checkpoint at an epoch boundary repeats the uninterrupted run.
* `SaveOnSignal` turns SIGTERM (a scheduler's stop), Ctrl-C and submitit's SIGUSR2 into "finish
  this step, save last.ckpt, stop"; a second signal stops at once without saving.
* `OutputFolderCheck` (a Hydra callback) reports an output folder that cannot be created in
  one line, before anything runs.
"""

from __future__ import annotations

import os
import shutil
import random
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `.NAME.partial` in the target's folder, fsync, then os.replace over NAME.

    Lightning's own save stages the file in $TMPDIR and moves it, which is a copy rather than a
    rename when $TMPDIR is another file system, so a kill during that copy truncates last.ckpt.
    A failed or killed save here leaves at most the `.partial` file, which the next save replaces.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's transaction is what it offers
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a crash (where the file system supports it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_states() -> dict[str, Any]:
    """The global torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class RNGState(L.Callback):
    """Saves the global RNG states in every checkpoint and restores them on resume.

    Lightning restores weights, optimizer, schedulers, EMA and loop counters but not the RNG,
    on which the training noise (t, eps, dropout) and the loader's per-epoch shuffle draw. A
    resumed run skips the validation of the step it resumes from, so validation here leaves the
    RNG as it found it: the training stream depends on the training steps alone. The states
    saved are rank 0's (under DDP every rank is seeded alike). So that DDP ranks do not draw
    the same t and noise, each rank then branches off its own stream at the start of training
    (a draw shared by all ranks plus the rank): deterministic. Only rank 0's state is saved, so a
    resumed DDP run branches again from it: the noise is as random as before but the streams are
    not the uninterrupted run's (single-process resumes are exact).
    """

    def __init__(self):
        self._before_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            shared = int(torch.randint(0, 2**62, (1,)))  # the same on every rank (same seed or state)
            torch.manual_seed(shared + trainer.global_rank)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._before_validation = rng_states()

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._before_validation = rng_states()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._before_validation is not None:
            set_rng_states(self._before_validation)


class SaveOnSignal(L.Callback):
    """SIGTERM, SIGINT (Ctrl-C) or SIGUSR2: finish the current step, save last.ckpt, stop training.

    SIGTERM is how schedulers stop a job; SIGUSR2 is submitit's warning before a SLURM time
    limit. The save happens where the periodic checkpoint's does (at the end of a training step,
    after EMA's update: list this callback after `ema`), so resuming from it is resuming from any
    other checkpoint. Under DDP the ranks agree at each step whether any was signalled. A second
    signal raises KeyboardInterrupt: training stops at once and the last checkpoint stays as it
    was. `signum` is the signal that stopped the run (None: it was not stopped).
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGUSR2"), filename: str = "last"):
        self.signals = [signal.Signals[name] for name in signals]
        self.filename = filename
        self.signum: int | None = None
        self.saved: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nudm-train: {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              f"(send it again to stop at once without saving)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        # replaces Lightning's SIGTERM handler, which would stop mid-validation with EMA weights swapped in
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handler)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return
        self.signum = self.signum or signal.SIGTERM
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        path = os.path.join(folder or os.path.join(trainer.default_root_dir, "checkpoints"), self.filename + ".ckpt")
        trainer.save_checkpoint(path)
        self.saved = path
        trainer.should_stop = True


class SaveAtEnd(L.Callback):
    """last.ckpt at the step training ends (max_steps), when the periodic checkpoint's interval does not fall on it:
    without it a run of 3,000 steps with checkpoints every 400 keeps step 2,800 as its last. The save happens at the
    end of the step, where the periodic one would (after EMA's update; list this callback after `ema`)."""

    def __init__(self, filename: str = "last"):
        self.filename = filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps is None or trainer.max_steps < 0 or trainer.global_step < trainer.max_steps:
            return
        every = getattr(trainer.checkpoint_callback, "_every_n_train_steps", 0)
        if every and trainer.global_step % every == 0:  # the periodic checkpoint saves this step itself
            return
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        trainer.save_checkpoint(os.path.join(folder or os.path.join(trainer.default_root_dir, "checkpoints"), self.filename + ".ckpt"))


PREVIOUS_CONFIG = ".hydra.before"  # the folder's recorded config as it was before this command (udm.jobs.train)


class OutputFolderCheck(HydraCallback):
    """Before a run (or a sweep) starts: its output folder must be creatable and writable. A run folder that
    already records a config (.hydra/) has it copied to .hydra.before first, because Hydra writes the new
    command's config over it before udm's code runs; a command that is then refused puts it back."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_creatable(config, "hydra.run.dir")
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir"))).expanduser()
        recorded = folder / str(OmegaConf.select(config, "hydra.output_subdir") or ".hydra")
        if recorded.is_dir():
            shutil.copytree(recorded, folder / PREVIOUS_CONFIG, dirs_exist_ok=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_creatable(config, "hydra.sweep.dir")


def check_creatable(config: DictConfig, key: str) -> None:
    """Exit with one line on stderr when the folder at `key` cannot be made (nothing is created here)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)  # what Hydra does next; lets ${hydra:...} in the path resolve
    folder = Path(str(OmegaConf.select(config, key))).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    print(f"error: cannot create the output folder {folder}: {problem}; choose another with {key}=...", file=sys.stderr)
    sys.exit(2)
