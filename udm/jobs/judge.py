"""The fluency judge: a small causal LM trained on a text data module's training split, cached per data config.

`udm-features data=poems` trains it (or reports the cached one); udm-eval's `fluency` metric and
`udm-generate fluency=true` load it, and train it on the fly when it is missing. It lives beside the FID
extractors, keyed the same way:

    <cache_dir>/judge/<data name>-<hash of the data config>.pt
    cache_dir default: $XDG_CACHE_HOME/udm/features, else ~/.cache/udm/features

and holds only tensors and plain values (net kwargs, weights, held-out perplexity, the tokenizer as strings,
the training settings), so it loads with torch.load(weights_only=True). The hash leaves out batch_size and
num_workers only: a condition can change the tokenizer (title characters join the character vocabulary), and
the judge reads token ids. Perplexities compare only under the same judge: `retrain=true` replaces it, and
udm-eval records its id.

Training is a plain torch loop with a rich progress bar, as the extractor's (udm.jobs.features): a few epochs
over in-memory token ids need no checkpoints, loggers or DDP.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from udm.data.tokenizers import tokenizer_state
from udm.checkpoint import load_cached
from udm.errors import UdmError
from udm.jobs.features import cache_path as keyed_path
from udm.jobs.features import default_cache_dir, save_atomically
from udm.jobs.epochs import fit_epochs
from udm.jobs.outputs import check_output_folder
from udm.metrics.fluency import generative_perplexity
from udm.models import pick_device
from udm.nets.causal_lm import CausalLM

FORMAT = "udm-fluency-judge/1"
NOT_THE_TOKENS = ("batch_size", "num_workers")  # data settings that leave the token ids and the split unchanged


def cache_path(data_cfg: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Where the judge of this data config lives: <cache_dir>/judge/<name>-<hash>.pt."""
    folder = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "judge"
    return keyed_path(data_cfg, folder, ignore=NOT_THE_TOKENS)


def default_judge() -> DictConfig:
    """udm's judge settings (conf/judge/gpt2.yaml), for callers outside a Hydra app."""
    from udm.cli import CONF_DIR

    return OmegaConf.load(Path(CONF_DIR) / "judge" / "gpt2.yaml")


def fit(judge: CausalLM, ids: Tensor, epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
        progress: bool = True) -> None:
    """Next-token cross-entropy with AdamW under a one-cycle learning rate, the texts reshuffled every epoch."""
    ids = ids.to(next(judge.parameters()).device)
    fit_epochs(judge, len(ids), lambda idx: judge.nll(ids[idx]).mean(), epochs, batch_size, lr, weight_decay,
               torch.Generator().manual_seed(seed),
               "the fluency judge", lambda loss: f"perplexity {loss.exp().item():.1f}", pct_start=0.1, progress=progress)


def train_judge(data_cfg: dict[str, Any], judge_cfg: DictConfig, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Train the judge on the data's training split; returns the payload that is cached (weights on CPU)."""
    data = instantiate(data_cfg)
    if getattr(data, "modality", None) != "text":
        raise UdmError(f"{type(data).__name__} data holds no text; the fluency judge is a language model of token ids "
                       f"(data=poems or data=text_file)")
    data.setup("fit")
    net_cfg = {**OmegaConf.to_container(judge_cfg.net, resolve=True),
               "vocab_size": len(data.tokenizer), "length": int(data.length)}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # the seed below leaves no trace
        torch.manual_seed(judge_cfg.seed)
        judge = instantiate(net_cfg).to(device)
        fit(judge, data.train, judge_cfg.epochs, judge_cfg.batch_size, judge_cfg.lr, judge_cfg.weight_decay,
            judge_cfg.seed, progress)
    seconds = time.perf_counter() - start
    return {
        "format": FORMAT,
        "net": net_cfg,
        "state_dict": {k: v.cpu() for k, v in judge.state_dict().items()},
        "test_perplexity": generative_perplexity(judge, data.test),
        "train_seconds": seconds,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "tokenizer": tokenizer_state(data.tokenizer),
        "data": dict(data_cfg),
        "settings": asked(judge_cfg)["settings"],
    }


def load_judge(path: str | Path) -> tuple[CausalLM, dict[str, Any]]:
    """The cached judge (eval mode) and its record (held-out perplexity, tokenizer, settings, data), read with
    weights_only=True."""
    path = Path(path)
    advice = "delete it or run udm-features with data=<the same data> retrain=true"
    payload = load_cached(path, FORMAT, "the fluency judge", "a udm fluency judge", advice)
    try:
        judge = instantiate(payload["net"])
        judge.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise UdmError(f"the fluency judge {path} is damaged ({type(e).__name__}: {str(e).splitlines()[0]}); {advice}") from None
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["path"] = str(path)
    info["id"] = f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"  # changes when retrained
    return judge.eval(), info


def ensure_judge(data_cfg: dict[str, Any], judge_cfg: DictConfig | None = None, cache_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", retrain: bool = False, progress: bool = True,
                 who: str = "udm-features") -> tuple[CausalLM, dict[str, Any]]:
    """The cached judge of this data config on `device`, trained (with a message) when missing or when retrain is
    set. judge_cfg: the judge settings (conf/judge/*.yaml; None: udm's gpt2.yaml); they apply when it is trained."""
    judge_cfg = default_judge() if judge_cfg is None else judge_cfg
    device = pick_device(device)
    path = cache_path(data_cfg, cache_dir)
    trained = retrain or not path.is_file()
    if trained:
        print(f"{who}: training the fluency judge on {data_cfg.get('_target_')} ({judge_cfg.epochs} epochs); "
              f"it is cached at {path}")
        save_atomically(train_judge(data_cfg, judge_cfg, device, progress), path)
    judge, info = load_judge(path)
    if not trained and recorded(info) != asked(judge_cfg):  # the cache is keyed by the data alone, as FID's extractor
        print(f"{who}: the cached fluency judge {path} was trained with other settings than judge= gives now; it is "
              f"used as it is (udm-features retrain=true replaces it)")
    return judge.to(device), info


def asked(judge_cfg: DictConfig) -> dict[str, Any]:
    """The judge settings as the cache records them: training settings and the net's own kwargs."""
    settings = OmegaConf.to_container(judge_cfg, resolve=True)
    return {"net": settings.pop("net"), "settings": settings}


def recorded(info: dict[str, Any]) -> dict[str, Any]:
    net = {k: v for k, v in info["net"].items() if k not in ("vocab_size", "length")}  # those come from the data
    return {"net": net, "settings": info["settings"]}


def fluency_judge(cfg: DictConfig) -> dict[str, Any]:
    """udm-features on text data: train (or find) the judge for cfg.data and print its held-out perplexity."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    check_output_folder(cfg.cache_dir or default_cache_dir(), key="cache_dir")
    net, info = ensure_judge(data_cfg, cfg.judge, cfg.cache_dir, cfg.device, cfg.retrain, cfg.progress)
    params = sum(p.numel() for p in net.parameters())
    print(f"udm-features: the fluency judge's held-out perplexity is {info['test_perplexity']:.1f} on {info['n_test']} "
          f"texts (trained in {info['train_seconds']:.1f}s on {info['n_train']} texts, {params / 1e6:.1f}M parameters)")
    print(f"udm-features: judge at {info['path']}")
    return info
