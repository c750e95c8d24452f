"""evaluate(cfg): checkpoint in, metrics out — a rich table on the terminal and one flat JSON file.

    udm-eval ckpt=RUN n=500 sampler=ddim sampler.steps=50 [metrics=[fid,kid,bpd]] [seed=0]

opens the checkpoint, chooses the metrics, draws n samples with the sampler, scores them with each metric
and writes (never over an existing file)

    <run>/eval/<sampler>-<steps>steps-n<n>-seed<seed>.json   (or out_dir=...)
    <run>/eval/<same stem>.png                               the scored samples (texts: .txt)

Metrics are udm.metrics.Metric objects, one YAML file each in the config group `metric` (udm/conf/metric/,
and metric/ in any folder added with hydra.searchpath=[file://...]); `metrics=null` computes every one that
applies and skips the rest silently; naming one that does not apply is an error. udm's own:
    fid, kid  image checkpoints: FID and KID of the samples against every held-out image of
              the checkpoint's data (n may not exceed their number), in the feature space of
              udm's own classifier (udm-features; trained on the fly when not cached)
    bpd       Gaussian processes on images: bits/dim of the variational bound on the first
              bpd_samples held-out images (bpd_samples=0 turns it off); it costs T network
              evaluations per image, so 64 images at T = 1000 cost as much as 1,280 samples of
              50-step DDIM
    text      text checkpoints: form accuracy, copied lines, distinct characters, and the lengths of
              variable-length text (udm.metrics.text)
    fluency   text checkpoints: generative perplexity under udm's own judge, a small GPT-2 trained on the
              training split (udm-features; trained on the fly when not cached), and unigram entropy per
              text, each also for the first n held-out texts (udm.metrics.fluency)
    nelbo     [MASK] and uniform-state token processes: negative ELBO per token on the first nelbo_samples
              held-out texts
    fid_inception  only when named: FID the way papers report it, on the FID Inception-v3 (its weights file
              read locally, never downloaded) against the training split's statistics (udm.metrics.inception_fid)
Their settings are eval.yaml's bpd_*, kid_* and nelbo_samples keys (interpolated into their YAML files);
`+metric.<name>.<key>=value` sets any metric's setting by its own name. The sampling cost (seconds and
network evaluations per sample) is always measured.

The JSON is one flat object (udm-compare reads it from multirun folders); keys whose
metric was not computed are absent:
    schema                 "udm-eval/1"
    ckpt, run, global_step the checkpoint file, its run folder, its training step
    modality               "image" | "text" | "points"
    process, process_target, net, net_params, data
                           the recipe: process.describe(), the process and net classes, the
                           net's parameter count, the data class
    sampler                the sampler's config name (ddim, ddpm, ...); sampler_target its class
    sampler_<key>          every setting of the sampler config (sampler_steps, sampler_eta, ...;
                           nested ones joined by _, e.g. sampler_moments_num_samples)
    steps                  the steps the sampler ran (T when sampler.steps is null)
    n, seed, batch_size, device
    label, labels, guidance, guidance_interval   the condition the samples were drawn under (only when set)
    guidance_variant, guide   with guidance: cfg or cfg++, and autoguidance's guide checkpoint (only when set)
    net                    how the net ran while sampling (udm/fast.py): e.g. "bf16-mixed, channels_last" or "32-true"
    seconds_per_sample     wall seconds of the sampling loop / n (with devices > 1: the slowest rank's)
    sampling_processes     how many processes shared the sampling (devices x num_nodes)
    nfe_per_sample         network evaluations per sample: rows fed through the net / n
    sampling_seconds       wall seconds of the sampling loop
    sampler_prepare_seconds  one-off preparation before sampling (Analytic-DPM's moments; ~0 otherwise)
    run_overrides          the overrides the run was trained with (its .hydra/overrides.yaml; absent without one)
    eval_overrides         this evaluation's own command-line overrides (absent when not run through Hydra)
  then the `columns` of each metric computed (documented in its class):
    fid                    FID on the extractor's features
    kid_mean, kid_std      KID over kid_subsets subsets of kid_subset_size images
    kid_subsets, kid_subset_size
    fid_real_images        held-out images the real statistics come from
    fid_extractor          the extractor's id (<data>-<config hash>-<file hash>): FIDs compare only under one id
    fid_extractor_accuracy its held-out classification accuracy (0..1)
    bpd, bpd_sem, bpd_images  bits/dim, its standard error over images, the held-out images it averages over
    bpd_levels, bpd_variance  the pixel levels of its discretized decoder, sigma_t^2 of its reverse steps
    bpd_seconds            its wall time (T network evaluations per image)
    form_accuracy, copy_rate, distinct_chars   text measures of the generated texts (form_accuracy only where the
                           training texts share one length in characters)
    mean_length, held_out_mean_length, length_tv, length_tv_train
                           variable-length text (data.lengths=variable): tokens per text, and the total-variation
                           distance of the length histogram to the held-out texts' (udm.metrics.lengths)
    gen_ppl, real_ppl      perplexity of the generated and of the first n held-out texts under udm's judge
    entropy, real_entropy  unigram entropy per text (nats) of the same texts
    fluency_judge, fluency_real_texts   the judge's id (perplexities compare only under one id), the held-out texts
    nelbo_per_token, nelbo_texts               negative ELBO per token (nats) and the held-out texts it averages over
    nelbo_sem              its standard error over those texts ([MASK]: the sum over t is exact, one draw per t;
                           uniform-state: one Monte Carlo draw of t per text, heavy-tailed)
    nelbo_skipped          held-out texts left out for holding characters unseen in training ([UNK])
    fid_inception          FID on the FID Inception-v3's pool3 features against the training images' statistics
    fid_inception_train_images, fid_inception_weights   the training images those come from, the first 8 hex
                           digits of the weights file's sha256 (FIDs compare only under one)
  and last:
    samples_file, json     the PNG grid (or .txt of texts) and this file
    eval_seconds           wall seconds of the whole evaluation
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from udm.distill.recipe import with_student_sampler
from udm.errors import UdmError
from udm.fast import describe_net
from udm.jobs.conditions import describe as describe_conditions
from udm.jobs.outputs import check_output_folder
from udm.jobs.conditions import batches, guidance_settings, prior_labels, requested_labels, with_guidance
from udm.jobs.sample import fresh_path
from udm.jobs.settings import chosen_keys
from udm.metrics.base import Context, Metric, Row, load_metrics
from udm.models import TrainedModel, open_model
from udm.processes.base import predict

SCHEMA = "udm-eval/1"
COST = (  # the table's last rows: measured for every evaluation
    Row("seconds_per_sample", "seconds/sample", "{:.4g}", note="{sampling_seconds:.1f}s on {device}, net in {net}"),
    Row("nfe_per_sample", "NFE/sample", "{:.1f}", note="network evaluations"),
)


class CountingModel:
    """model(x_t, t) that counts the rows it evaluates: network evaluations summed over samples."""

    def __init__(self, net):
        self.net, self.rows = net, 0

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        self.rows += int(x_t.shape[0])
        return predict(self.net, x_t, t, cond)


def choose_metrics(cfg: DictConfig, model: TrainedModel, context: Context) -> list[Metric]:
    """Every metric that applies when none are named (metrics=null); exactly the named ones otherwise, each of
    which must apply; then each one's checks of the request, before anything is sampled."""
    asked = cfg.get("metrics")
    if isinstance(asked, ListConfig):
        asked = OmegaConf.to_container(asked)
    if asked is None:
        metrics = [m for m in load_metrics(cfg) if m.why_not(model, context) is None]
    else:
        names = [asked] if isinstance(asked, str) else list(asked)
        metrics = load_metrics(cfg, list(dict.fromkeys(str(name) for name in names)))
        for metric in metrics:
            reason = metric.why_not(model, context)
            if reason:
                raise UdmError(f"metrics asks for {metric.name}, but {reason}")
    for metric in metrics:
        metric.check(model, context)
    return metrics


def build_sampler(cfg: DictConfig, model):
    """The configured sampler, made ready for the model (Analytic-DPM estimates its moments once per checkpoint),
    and the steps it takes: capped at T for text (as udm-generate does)."""
    sampler_cfg = cfg.sampler.copy()
    if model.modality == "text" and "steps" in sampler_cfg:
        sampler_cfg.steps = min(sampler_cfg.steps or model.process.T, model.process.T)
    def guide_net(net):  # autoguidance's net: through `fast` and counted, as the model's net is
        return CountingModel(instantiate(cfg.fast)(net, device=model.device))

    sampler = with_guidance(model.sampler(sampler_cfg), cfg, model, guide_net)
    return sampler, len(sampler.timesteps(model.process))


def draw_samples(cfg: DictConfig, model, sampler, device: torch.device, fabric=None,
                 labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """n samples from the prior through the sampler (sample i drawn for labels[i] when given), with their wall
    time and network evaluations.

    Batch i starts from the i-th slice of one x_T draw and samples with its own generator
    (seed, i), so the samples do not depend on how batches are shared out: under `fabric`
    (devices > 1) rank r draws batches r, r + world, ... and every rank gets all of them back
    in order, the same tensor a single process draws.
    """
    generator = torch.Generator(device).manual_seed(cfg.seed)
    starts = model.prior(cfg.n, generator, cfg.batch_size, prior_labels(model, cfg, labels))
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    counting = CountingModel(instantiate(cfg.fast)(model.net, device=device))
    mine, start = {}, time.perf_counter()
    for i, (x_T, cond) in enumerate(batches(starts, labels, cfg.batch_size)):
        if i % world == rank:
            batch_generator = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + i)
            mine[i] = sampler(model.process, counting, x_T, generator=batch_generator, progress=cfg.progress and rank == 0,
                              cond=cond).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    guide = getattr(getattr(sampler, "guidance", None), "guide", None)  # autoguidance's net evaluates rows too
    seconds, rows = time.perf_counter() - start, counting.rows + (guide.rows if isinstance(guide, CountingModel) else 0)
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
    if nodes > 1 and not any(os.environ.get(v) for v in ("SLURM_JOB_ID", "MASTER_ADDR", "WORLD_SIZE")):
        raise UdmError(f"num_nodes={nodes} waits for {nodes - 1} other node(s), and this is no cluster job (no SLURM_JOB_ID, "
                       f"MASTER_ADDR or WORLD_SIZE); run it through SLURM or torchrun, or use devices=N on one machine")
    import lightning as L

    accelerator = "cpu" if cfg.device == "cpu" else "auto"
    fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=nodes, strategy="ddp")
    fabric.launch()
    return fabric


def score(metric: Metric, model: TrainedModel, samples: Tensor, context: Context) -> dict[str, Any]:
    out = metric.compute(model, samples, context)
    undeclared = sorted(set(out) - set(metric.columns))
    if undeclared:
        raise TypeError(f"metric {metric.name} ({type(metric).__name__}) wrote {undeclared}, which its `columns` do not declare")
    return out


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
    out.update(flat({k: v for k, v in settings.items() if not k.startswith("_") and k != "guidance"}, "sampler"))
    out.update(steps=steps, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size)
    for key in ("label", "labels", "class_prior"):  # the condition the samples were drawn under, and the guidance
        if cfg.get(key) is not None:
            out[key] = cfg[key]
    out.update(guidance_settings(cfg))
    return out


def run_overrides(model: TrainedModel) -> list[str] | None:
    """The overrides the run was trained with, as Hydra recorded them in <run>/.hydra/overrides.yaml (None without)."""
    path = model.run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # an unreadable record is no record
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def eval_overrides(cfg: DictConfig) -> list[str] | None:
    """This evaluation's own overrides (key=value as typed): from cfg's hydra node when it has one, else from the
    running Hydra app; None when it does not run under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if task is None and HydraConfig.initialized():
        task = HydraConfig.get().overrides.task
    return None if task is None else [str(o) for o in task]


def print_table(result: dict[str, Any], metrics: list[Metric]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"udm-eval: {result['process']}, {result['sampler']} {result['steps']} steps, n={result['n']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    for row in [row for metric in metrics for row in metric.table] + list(COST):
        if row.key in result:
            table.add_row(row.label, row.fmt.format(result[row.key]), row.note_for(result))
    Console().print(table)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Open the model, choose the metrics, draw the samples, score them with each metric, write JSON, samples
    and table."""
    start = time.perf_counter()
    if cfg.n < 2:
        raise UdmError(f"n must be at least 2 samples, got {cfg.n}")
    model = open_model(cfg.ckpt, "cpu", progress=cfg.progress)
    if cfg.get("data") is not None:  # a model without data of its own (a diffusers folder): the data its metrics need
        model = model.with_data(OmegaConf.to_container(cfg.data, resolve=True))
    cfg = with_student_sampler(cfg, model.recipe, chosen_keys())  # a distilled student's own sampler by default
    folder = check_output_folder(cfg.out_dir or model.run_dir / "eval")  # before the extractor and the samples
    if cfg.get("cache_dir"):
        check_output_folder(cfg.cache_dir, key="cache_dir")
    labels = requested_labels(model, cfg, 1)  # label=K: [K]; labels=all: one of each class; the n samples cycle through them
    if labels is not None:
        labels = labels.repeat(-(-cfg.n // len(labels)))[: cfg.n]
    context = Context(cfg, model.data("test"), conditions=labels)
    metrics = choose_metrics(cfg, model, context)

    fabric = launch(cfg)
    context.device = model.to(fabric.device if fabric is not None else cfg.device).device
    prepare_start = time.perf_counter()
    sampler, steps = build_sampler(cfg, model)
    prepare_seconds = time.perf_counter() - prepare_start
    samples, cost = draw_samples(cfg, model, sampler, context.device, fabric, labels)
    if fabric is not None and fabric.global_rank != 0:  # rank 0 scores the gathered samples and writes the files
        return {}

    result: dict[str, Any] = {"schema": SCHEMA, **recipe_summary(model), **sampler_summary(cfg, steps),
                              "device": str(context.device), **cost, "sampler_prepare_seconds": prepare_seconds}
    recorded = {"run_overrides": run_overrides(model), "eval_overrides": eval_overrides(cfg)}
    result.update({k: v for k, v in recorded.items() if v is not None})
    for metric in metrics:
        result.update(score(metric, model, samples, context))

    json_path = fresh_path(folder, f"{cfg.sampler_name}-{steps}steps-n{cfg.n}-seed{cfg.seed}{describe_conditions(cfg)}", ".json")
    result["samples_file"] = str(model.save_samples(samples, json_path.with_suffix("")))
    result["json"] = str(json_path)
    result["eval_seconds"] = time.perf_counter() - start
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print_table(result, metrics)
    print(f"udm-eval: samples written to {result['samples_file']}")
    print(f"udm-eval: metrics written to {json_path}")
    return result
