"""evaluate(cfg): checkpoint in, metrics out — a rich table on the terminal and one flat JSON file.

    udm-eval ckpt=RUN n=500 sampler=ddim sampler.steps=50 [metrics=[fid,kid,bpd]] [seed=0]

draws n samples with the sampler, scores them, and writes (never over an existing file)

    <run>/eval/<sampler>-<steps>steps-n<n>-seed<seed>.json   (or out_dir=...)
    <run>/eval/<same stem>.png                               the scored samples (texts: .txt)

Metrics (`metrics=null` computes every one that applies and skips the rest silently;
naming one that does not apply is an error):
    fid, kid  image checkpoints: FID and KID of the samples against every held-out image of
              the checkpoint's data (n may not exceed their number), in the feature space of
              udm's own classifier (udm-features; trained on the fly when not cached)
    bpd       Gaussian processes on images: bits/dim of the variational bound on the first
              bpd_samples held-out images (bpd_samples=0 turns it off); it costs T network
              evaluations per image, so 64 images at T = 1000 cost as much as 1,280 samples of
              50-step DDIM
    text      text checkpoints: form accuracy, copied lines, distinct characters (udm.metrics.text)
    nelbo     token processes: negative ELBO per token on the first nelbo_samples held-out texts
The sampling cost (seconds and network evaluations per sample) is always measured.

The JSON is one flat object (udm-compare reads it from multirun folders); keys whose
metric was not computed are absent:
    schema                 "udm-eval/1"
    ckpt, run, global_step the checkpoint file, its run folder, its training step
    modality               "image" | "text" | "other"
    process, process_target, net, net_params, data
                           the recipe: process.describe(), the process and net classes, the
                           net's parameter count, the data class
    sampler                the sampler's config name (ddim, ddpm, ...); sampler_target its function
    sampler_<key>          every setting of the sampler config (sampler_steps, sampler_eta, ...;
                           nested ones joined by _, e.g. sampler_moments_num_samples)
    steps                  the steps the sampler ran (T when sampler.steps is null)
    n, seed, batch_size, device
    net                    how the net ran while sampling (udm/fast.py): e.g. "bf16-mixed, channels_last" or "32-true"
    seconds_per_sample     wall seconds of the sampling loop / n (with devices > 1: the slowest rank's)
    sampling_processes     how many processes shared the sampling (devices x num_nodes)
    nfe_per_sample         network evaluations per sample: rows fed through the net / n
    sampling_seconds       wall seconds of the sampling loop
    sampler_prepare_seconds  one-off preparation before sampling (Analytic-DPM's moments; ~0 otherwise)
    fid                    FID on the extractor's features
    kid_mean, kid_std      KID over kid_subsets subsets of kid_subset_size images
    kid_subsets, kid_subset_size
    fid_real_images        held-out images the real statistics come from
    fid_extractor          the extractor's id (<data>-<config hash>-<file hash>): FIDs compare only under one id
    fid_extractor_accuracy its held-out classification accuracy (0..1)
    bpd, bpd_sem, bpd_images  bits/dim, its standard error over images, the held-out images it averages over
    bpd_levels, bpd_variance  the pixel levels of its discretized decoder, sigma_t^2 of its reverse steps
    bpd_seconds            its wall time (T network evaluations per image)
    form_accuracy, copy_rate, distinct_chars   text measures of the generated texts
    nelbo_per_token, nelbo_texts               negative ELBO per token (nats) and the held-out texts it averages over
    nelbo_skipped          held-out texts left out for holding characters unseen in training ([UNK])
    samples_file, json     the PNG grid (or .txt of texts) and this file
    eval_seconds           wall seconds of the whole evaluation
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from udm.checkpoint import recipe_modality
from udm.errors import UdmError
from udm.fast import describe_net
from udm.grid import save_grid
from udm.jobs.sample import fresh_path
from udm.models import open_model

SCHEMA = "udm-eval/1"
METRICS = ("fid", "kid", "bpd", "text", "nelbo")


class CountingModel:
    """model(x_t, t) that counts the rows it evaluates: network evaluations summed over samples."""

    def __init__(self, net):
        self.net, self.rows = net, 0

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        self.rows += int(x_t.shape[0])
        return self.net(x_t, t) if cond is None else self.net(x_t, t, cond)


def modality(recipe: dict[str, Any]) -> str:
    return recipe_modality(recipe)


def bpd_levels(data, cfg: DictConfig) -> int | None:
    """The number of pixel levels of the held-out images: bpd_levels when set, else the regular grid
    over [-1, 1] they lie on (256 for 8-bit pixels, 17 for scikit-learn's digits); None when off-grid."""
    if cfg.get("bpd_levels"):
        return int(cfg.bpd_levels)
    values = torch.unique(data.test[: cfg.bpd_samples].double())
    if len(values) < 2 or values.min() < -1 - 1e-6 or values.max() > 1 + 1e-6:
        return None
    levels = round(2 / float(values.diff().min())) + 1
    grid = (values + 1) * (levels - 1) / 2
    return levels if levels <= 65536 and (grid - grid.round()).abs().max() < 1e-3 else None


def has_labels(data, recipe: dict[str, Any], cfg: DictConfig) -> bool:
    """Whether the FID feature extractor exists or can be trained: a cached one, or class labels to train one."""
    from udm.jobs.features import cache_path

    if cache_path(recipe["data"], cfg.cache_dir).is_file():
        return True
    return hasattr(data, "load_labels") and data.load_labels() is not None


def why_not(metric: str, process, recipe: dict[str, Any], data, cfg: DictConfig) -> str | None:
    """Why `metric` does not apply to this checkpoint, its data and the config (None: it applies)."""
    kind = modality(recipe)
    if metric in ("fid", "kid"):
        if kind != "image":
            return f"{metric} applies to image checkpoints; this one holds {kind} data"
        if not has_labels(data, recipe, cfg):
            return (f"{metric} needs the feature extractor, a classifier trained on labelled images, and "
                    f"{type(data).__name__} data has no class labels (and no extractor is cached for it)")
    if metric == "bpd":
        if kind != "image" or process.capabilities.likelihood != "bits/dim":
            return (f"bits/dim applies to Gaussian processes (udm.processes.Gaussian) of images; "
                    f"this checkpoint's process is {process.describe()}")
        if cfg.bpd_samples < 1:
            return "bpd_samples=0 turns bits/dim off; set bpd_samples to a positive number of held-out images"
        if bpd_levels(data, cfg) is None:
            return ("bits/dim needs images on a grid of pixel levels, and the held-out images are not on one "
                    "(resized?); set bpd_levels to the data's number of levels")
    if metric == "text" and kind != "text":
        return f"the text measures apply to text checkpoints; this one holds {kind} data"
    if metric == "nelbo":
        if process.capabilities.likelihood != "token nelbo":
            return (f"the token negative ELBO applies to the [MASK] (absorbing) token process; "
                    f"this checkpoint's process is {process.describe()}")
        if cfg.nelbo_samples < 1:
            return "nelbo_samples=0 turns the negative ELBO off; set nelbo_samples to a positive number of held-out texts"
    return None


def choose_metrics(asked, process, recipe: dict[str, Any], data, cfg: DictConfig) -> list[str]:
    """Every metric that applies when none are named; exactly the named ones otherwise (each must apply)."""
    if asked is None:
        return [m for m in METRICS if why_not(m, process, recipe, data, cfg) is None]
    names = [asked] if isinstance(asked, str) else list(asked)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise UdmError(f"unknown metric(s) {', '.join(map(str, unknown))}; choose from {', '.join(METRICS)} "
                       f"(e.g. metrics=[fid,kid]), or metrics=null for all that apply")
    for m in names:
        reason = why_not(m, process, recipe, data, cfg)
        if reason:
            raise UdmError(f"metrics asks for {m}, but {reason}")
    return names


def build_sampler(cfg: DictConfig, model):
    """The configured sampler, made ready for the model (Analytic-DPM estimates its moments once per checkpoint),
    and the steps it takes: capped at T for text (as udm-generate does)."""
    sampler_cfg = cfg.sampler.copy()
    if model.modality == "text" and "steps" in sampler_cfg:
        sampler_cfg.steps = min(sampler_cfg.steps or model.process.T, model.process.T)
    sampler = model.sampler(sampler_cfg)
    return sampler, len(sampler.timesteps(model.process))


def draw_samples(cfg: DictConfig, model, sampler, device: torch.device, fabric=None) -> tuple[Tensor, dict[str, float]]:
    """n samples from the prior through the sampler, with their wall time and network evaluations.

    Batch i starts from the i-th slice of one x_T draw and samples with its own generator
    (seed, i), so the samples do not depend on how batches are shared out: under `fabric`
    (devices > 1) rank r draws batches r, r + world, ... and every rank gets all of them back
    in order, the same tensor a single process draws.
    """
    generator = torch.Generator(device).manual_seed(cfg.seed)
    starts = model.prior(cfg.n, generator, cfg.batch_size)
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    counting = CountingModel(instantiate(cfg.fast)(model.net, device=device))
    mine, start = {}, time.perf_counter()
    for i, x_T in enumerate(starts.split(cfg.batch_size)):
        if i % world == rank:
            batch_generator = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + i)
            mine[i] = sampler(model.process, counting, x_T, generator=batch_generator, progress=cfg.progress and rank == 0).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, rows = time.perf_counter() - start, counting.rows
    if fabric is not None:  # gather every rank's batches (objects: ranks hold different numbers of them)
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (mine, seconds, rows))
        mine = {i: x for part, _, _ in gathered for i, x in part.items()}
        seconds, rows = max(g[1] for g in gathered), sum(g[2] for g in gathered)
    samples = torch.cat([mine[i] for i in sorted(mine)])
    return samples, {"net": describe_net(counting.net), "seconds_per_sample": seconds / cfg.n, "nfe_per_sample": rows / cfg.n, "sampling_seconds": seconds,
                     "sampling_processes": world}


def launch(cfg: DictConfig):
    """A Lightning Fabric of `devices` processes (x num_nodes) when more than one is asked for, else None."""
    devices, nodes = int(cfg.get("devices", 1)), int(cfg.get("num_nodes", 1))
    if devices < 1 or nodes < 1:
        raise UdmError(f"devices and num_nodes must be >= 1, got devices={devices}, num_nodes={nodes}")
    if devices * nodes == 1:
        return None
    import lightning as L

    accelerator = "cpu" if cfg.device == "cpu" else "auto"
    fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=nodes, strategy="ddp")
    fabric.launch()
    return fabric


def image_metrics(cfg: DictConfig, metrics: list[str], samples: Tensor, data, recipe, device: torch.device) -> dict[str, Any]:
    from udm.jobs.features import ensure_extractor
    from udm.metrics.fid import frechet_distance, kernel_distance

    classifier, info = ensure_extractor(recipe["data"], cfg.extractor, cfg.cache_dir, device, progress=cfg.progress, who="udm-eval")
    out: dict[str, Any] = {"fid_real_images": len(data.test), "fid_extractor": info["id"],
                           "fid_extractor_accuracy": info["test_accuracy"]}
    if "fid" in metrics:
        out["fid"] = frechet_distance(data.test, samples, classifier)
    if "kid" in metrics:
        mean, std, size = kernel_distance(data.test, samples, classifier, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
        out.update(kid_mean=mean, kid_std=std, kid_subsets=cfg.kid_subsets, kid_subset_size=size)
    return out


def held_out_bpd(cfg: DictConfig, model, data, device: torch.device) -> dict[str, Any]:
    """Bits/dim of the variational bound on the first bpd_samples held-out images (udm.metrics.likelihood)."""
    from udm.analytic import model_eps_moments
    from udm.metrics.likelihood import bits_per_dim

    process, net = model.process, model.net
    gamma = model_eps_moments(process, net, model.checkpoint_path, model.recipe, cfg.progress) if cfg.bpd_variance == "analytic" else None
    x0, levels = data.test[: cfg.bpd_samples], bpd_levels(data, cfg)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    start = time.perf_counter()
    bpd = torch.cat([bits_per_dim(process, net, batch.to(device), generator=generator, progress=cfg.progress,
                                  variance=cfg.bpd_variance, levels=levels, gamma=gamma).cpu() for batch in x0.split(cfg.batch_size)])
    sem = float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else None
    return {"bpd": float(bpd.mean()), "bpd_sem": sem, "bpd_images": len(x0), "bpd_levels": levels,
            "bpd_variance": cfg.bpd_variance, "bpd_seconds": time.perf_counter() - start}


def held_out_nelbo(cfg: DictConfig, process, net, data, device: torch.device) -> dict[str, Any]:
    """Negative ELBO per token on the first nelbo_samples held-out texts (udm.metrics.likelihood)."""
    from udm.metrics.likelihood import token_nelbo

    x0 = data.test[: cfg.nelbo_samples]
    unseen = process.special_mask.cpu()[x0].any(1)  # characters missing from the training text became [UNK]
    if unseen.all():
        raise UdmError(f"all {len(x0)} held-out texts hold characters the tokenizer does not know; no negative ELBO to compute")
    generator = torch.Generator(device).manual_seed(cfg.seed)
    nelbo = torch.cat([token_nelbo(process, net, batch.to(device), generator=generator).cpu()
                       for batch in x0[~unseen].split(cfg.batch_size)])
    return {"nelbo_per_token": float(nelbo.mean()), "nelbo_texts": len(nelbo), "nelbo_skipped": int(unseen.sum())}


def recipe_summary(model) -> dict[str, Any]:
    recipe = model.recipe
    return {
        "ckpt": str(model.checkpoint_path.resolve()),
        "run": str(model.run_dir),
        "global_step": model.global_step,
        "modality": model.modality,
        "process": model.process.describe(),
        "process_target": recipe["process"].get("_target_"),
        "net": recipe["net"].get("_target_"),
        "net_params": sum(p.numel() for p in model.net.parameters()),
        "data": recipe.get("data", {}).get("_target_"),
    }


def sampler_summary(cfg: DictConfig, steps: int) -> dict[str, Any]:
    def flat(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}_{k}") if isinstance(v, dict) else {f"{prefix}_{k}": v})
        return out

    settings = OmegaConf.to_container(cfg.sampler, resolve=True)
    out = {"sampler": cfg.sampler_name, "sampler_target": settings.pop("_target_", None)}
    out.update(flat({k: v for k, v in settings.items() if not k.startswith("_")}, "sampler"))
    out.update(steps=steps, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size)
    return out


def decode(samples: Tensor, recipe: dict[str, Any]) -> list[str]:
    """Token ids -> texts with the checkpoint's own tokenizer, as udm-generate decodes them."""
    from udm.data.tokenizers import tokenizer_from_state

    tok = tokenizer_from_state(recipe["tokenizer"])
    return [tok.decode(row, skip_special_tokens=False) for row in samples.tolist()]


def save_samples(samples: Tensor, recipe: dict[str, Any], data, path: Path) -> Path:
    """What was scored, beside the JSON: a PNG grid of images, the texts one per line, or the data's own plot."""
    kind = modality(recipe)
    if kind == "image":
        return save_grid(samples, path.with_suffix(".png"))
    if kind == "text":
        path = path.with_suffix(".txt")
        path.write_text("\n".join(decode(samples, recipe)) + "\n", encoding="utf-8")
        return path
    return data.save_samples(samples, path)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"udm-eval: {result['process']}, {result['sampler']} {result['steps']} steps, n={result['n']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    extractor = (f"extractor accuracy {result.get('fid_extractor_accuracy', 0):.2%}, "
                 f"{result.get('fid_real_images')} held-out images")
    rows = [
        ("FID", "fid", "{:.3f}", extractor),
        ("KID", "kid_mean", "{:.4f}", f"± {result.get('kid_std', 0):.4f} over {result.get('kid_subsets')} subsets of "
                                     f"{result.get('kid_subset_size')}; {extractor}"),
        ("bits/dim", "bpd", "{:.3f}", f"± {result.get('bpd_sem') or 0:.3f}, {result.get('bpd_images')} held-out images, "
                                     f"{result.get('bpd_levels')} levels, {result.get('bpd_seconds', 0):.0f}s"),
        ("form accuracy", "form_accuracy", "{:.1%}", ""),
        ("copied lines", "copy_rate", "{:.1%}", ""),
        ("distinct chars", "distinct_chars", "{:.1f}", "per text"),
        ("NELBO/token", "nelbo_per_token", "{:.3f}", f"nats, {result.get('nelbo_texts')} held-out texts "
                                                    f"({result.get('nelbo_skipped')} with unseen characters left out)"),
        ("seconds/sample", "seconds_per_sample", "{:.4g}", f"{result['sampling_seconds']:.1f}s on {result['device']}, net in {result['net']}"),
        ("NFE/sample", "nfe_per_sample", "{:.1f}", "network evaluations"),
    ]
    for label, key, fmt, note in rows:
        if key in result:
            table.add_row(label, fmt.format(result[key]), note)
    Console().print(table)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    if cfg.n < 2:
        raise UdmError(f"n must be at least 2 samples, got {cfg.n}")
    model = open_model(cfg.ckpt, "cpu", progress=cfg.progress)
    process, net, recipe, ckpt_path = model.process, model.net, model.recipe, model.checkpoint_path
    data = model.data("test")
    asked = cfg.get("metrics")
    metrics = choose_metrics(OmegaConf.to_container(asked) if isinstance(asked, ListConfig) else asked, process, recipe, data, cfg)
    if {"fid", "kid"} & set(metrics) and cfg.n > len(data.test):
        raise UdmError(f"the held-out split of {type(data).__name__} has {len(data.test)} images, fewer than n={cfg.n}; "
                       f"FID/KID compare the samples with the held-out images, so use n<={len(data.test)}")
    fabric = launch(cfg)
    device = model.to(fabric.device if fabric is not None else cfg.device).device
    prepare_start = time.perf_counter()
    sampler, steps = build_sampler(cfg, model)
    prepare_seconds = time.perf_counter() - prepare_start

    samples, cost = draw_samples(cfg, model, sampler, device, fabric)
    if fabric is not None and fabric.global_rank != 0:  # rank 0 scores the gathered samples and writes the files
        return {}
    result: dict[str, Any] = {"schema": SCHEMA, **recipe_summary(model),
                              **sampler_summary(cfg, steps), "device": str(device), **cost,
                              "sampler_prepare_seconds": prepare_seconds}
    if {"fid", "kid"} & set(metrics):
        result.update(image_metrics(cfg, metrics, samples, data, recipe, device))
    if "bpd" in metrics:
        result.update(held_out_bpd(cfg, model, data, device))
    if "text" in metrics or "nelbo" in metrics:
        from udm.metrics.text import text_metrics

        if "text" in metrics:
            measures = text_metrics(decode(samples, recipe), data.train_texts)
            result.update({k: v for k, v in measures.items() if k != "n"})
        if "nelbo" in metrics:
            result.update(held_out_nelbo(cfg, process, net, data, device))

    folder = Path(cfg.out_dir) if cfg.get("out_dir") else ckpt_path.resolve().parent.parent / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    json_path = fresh_path(folder, f"{cfg.sampler_name}-{steps}steps-n{cfg.n}-seed{cfg.seed}", ".json")
    result["samples_file"] = str(save_samples(samples, recipe, data, json_path))
    result["json"] = str(json_path)
    result["eval_seconds"] = time.perf_counter() - start
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print_table(result)
    print(f"udm-eval: samples written to {result['samples_file']}")
    print(f"udm-eval: metrics written to {json_path}")
    return result


