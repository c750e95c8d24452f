"""generate_text(cfg): checkpoint -> token process + net -> a sampler -> n texts.

The texts are printed and written one per line to a .txt file (never over an existing
one), with their measures (form accuracy, copying, distinct characters; for variable-length
text the lengths against the held-out texts'; with fluency=true perplexity and unigram entropy
under udm's judge, udm.metrics.fluency) beside it in JSON. `template` infills: its known
characters stay fixed and the blanks are generated, which the inverse step supports directly
(sampling starts at the t where exactly the blanks are corrupted).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from udm.data.tokenizers import encode, end_and_pad, unknown_characters
from udm.errors import UdmError
from udm.fast import describe_net
from udm.jobs.conditions import batches, guidance_settings, with_guidance
from udm.jobs.outputs import check_output_folder
from udm.jobs.settings import command_line_keys
from udm.jobs.sample import fresh_path
from udm.jobs.text_conditions import describe as describe_condition
from udm.jobs.text_conditions import given, requested_text_condition
from udm.metrics.fluency import closing_ids, fluency, judge_for
from udm.metrics.lengths import length_measures
from udm.metrics.text import held_out_reference, text_metrics
from udm.models import open_model
from udm.processes import Latent, TokenMask, TokenProcess
from udm.processes.base import predict
from udm.samplers.cache import OutputCache, ignores_time

TOKEN_SAMPLING = ("temperature", "order", "top_k", "top_p", "sample_dtype", "block_size")  # udm-generate keys for TokenProcess.sampling


def encode_template(tok, template: str, blank: str, length: int) -> torch.Tensor:
    """Token ids of the template with [MASK] at every blank; checked for unknown characters and length."""
    if not template:
        raise UdmError("template is empty")
    pieces = template.split(blank)
    unknown = sorted({c for piece in pieces for c in unknown_characters(tok, piece)})
    if unknown:
        raise UdmError(f"template has characters the tokenizer does not know: {' '.join(unknown)}")
    ids: list[int] = []
    for i, seg in enumerate(encode(tok, pieces)):
        ids += ([tok.mask_token_id] if i else []) + seg
    if len(ids) != length:
        raise UdmError(f"template is {len(ids)} tokens long; this checkpoint generates exactly {length} "
                       f"(mark each character to generate with {blank!r})")
    if tok.mask_token_id not in ids:
        raise UdmError(f"template has no blanks ({blank!r}) to generate")
    return torch.tensor(ids, dtype=torch.long)


def keep_fixed(model, fixed: torch.Tensor, known: torch.Tensor, vocab_size: int):
    """Wrap model(x_t, t) so that it is certain of the template's known tokens.

    The certain logits (+1e4 on the known token, -1e4 elsewhere) depend only on the
    template, so they are built once and written over the known positions at every step.
    """
    certain = torch.nn.functional.one_hot(fixed[known], vocab_size).float() * 2e4 - 1e4  # [known, V]

    def wrapped(x_t, t, cond=None):
        out = predict(model, x_t, t, cond)
        out[:, known] = certain.to(out.dtype)
        return out

    return wrapped


def format_text(text: str) -> str:
    """A poem with a line break after every sentence-ending mark, for printing."""
    for mark in "。？！":
        text = text.replace(mark, mark + "\n")
    return text.rstrip("\n")


def identity(model):
    return model


def token_starts(cfg: DictConfig, process: TokenProcess, tok, generator, device, n: int):
    """A token process: x_T (all [MASK] / random tokens, or the template with its blanks), steps from
    tokens_per_step, and `fix`, what every net that predicts here is wrapped in (keep_fixed with a template)."""
    L = process.length
    tps = int(cfg.tokens_per_step)
    if not 1 <= tps <= L:
        raise UdmError(f"tokens_per_step must lie in 1..{L} (the sequence length), got {tps}")
    if cfg.sampler.get("steps") is not None:  # the steps set the pace: tokens_per_step does not apply
        if "tokens_per_step" in command_line_keys():
            raise UdmError("give tokens_per_step (steps = length / tokens per step) or sampler.steps, not both")
        tps = 0
    fix, t_start, blanks = identity, process.T, L
    if cfg.get("template"):
        template = encode_template(tok, cfg.template, cfg.blank, L).to(device)
        known = template != tok.mask_token_id
        blanks = int((~known).sum())
        t_start = process.t_for_count(blanks)
        def fix(model):  # the model and autoguidance's guide alike are certain of the known tokens
            return keep_fixed(model, template, known, process.vocab_size)

        starts = template.expand(n, -1).clone()
        if not isinstance(process, TokenMask):  # edit: the blanks start as random tokens
            noise = process.prior(starts, generator)
            starts = torch.where(known, starts, noise)
    else:
        starts = process.prior(torch.zeros(n, L, dtype=torch.long, device=device), generator)
    return fix, starts, t_start, cfg.sampler.get("steps") or math.ceil(blanks / tps), tps


def latent_starts(cfg: DictConfig, process: Latent, length: int, generator, device, n: int):
    """The encoding model of tokens: x_T ~ N(0, I) in the embedding space, the sampler's steps."""
    if cfg.get("template"):
        raise UdmError("template infilling needs a token process ([MASK] or replace); this checkpoint diffuses embeddings")
    for key in TOKEN_SAMPLING[1:]:
        if cfg.get(key) is not None:
            raise UdmError(f"{key} applies to token processes; this checkpoint diffuses embeddings")
    if cfg.get("temperature") is not None:
        if cfg.temperature < 0:
            raise UdmError(f"temperature must be >= 0, got {cfg.temperature}")
        process.decoder.temperature = float(cfg.temperature)
    starts = process.prior(torch.zeros(n, length, dtype=torch.long, device=device), generator)
    return identity, starts, process.T, cfg.sampler.get("steps") or process.T, 0


def measure(opened, ids: torch.Tensor, texts: list[str]) -> dict[str, float]:
    """The text measures of the generated texts against the checkpoint's training texts, and for variable-length
    text their lengths against the held-out texts' (udm.metrics.text, udm.metrics.lengths)."""
    data = opened.data("fit")
    measures = text_metrics(texts, data.train_texts) | held_out_reference(data.test_texts[: len(texts)], data.train_texts)
    if getattr(data, "variable", False):
        measures |= length_measures(ids, data.test, data.train, *end_and_pad(opened.tokenizer()))
    return measures


def describe_measures(m: dict[str, float]) -> str:
    said = [f"form accuracy {m['form_accuracy']:.1%} (held-out real {m['real_form_accuracy']:.1%})"] if "form_accuracy" in m else []
    said += [f"copied lines {m['copy_rate']:.1%} (real {m['real_copy_rate']:.1%})",
             f"{m['distinct_chars']:.1f} distinct characters per text (real {m['real_distinct_chars']:.1f})"]
    if "mean_length" in m:
        said += [f"mean length {m['mean_length']:.1f} tokens (held-out {m['held_out_mean_length']:.1f}), length TV "
                 f"{m['length_tv']:.3f} (training texts at this n: {m['length_tv_train']:.3f})"]
    if "gen_ppl" in m:
        said += [f"perplexity {m['gen_ppl']:.1f} under udm's judge (held-out texts {m['real_ppl']:.1f}), unigram entropy "
                 f"{m['entropy']:.3f} nats per text (held-out {m['real_entropy']:.3f})"]
    return ", ".join(said)


def generate_text(cfg: DictConfig) -> dict[str, Any]:
    if cfg.n < 1:
        raise UdmError(f"n must be a positive number of texts, got {cfg.n}")
    opened = open_model(cfg.ckpt, cfg.device, expect="text", progress=cfg.progress)
    folder = check_output_folder(cfg.out_dir or opened.run_dir / "samples")
    if cfg.fluency and not cfg.metrics:
        raise UdmError("fluency=true scores the texts with the other measures; it needs metrics=true")
    if cfg.metrics and cfg.fluency and cfg.cache_dir:  # where a missing judge would be written, before sampling
        check_output_folder(cfg.cache_dir, key="cache_dir")
    process, device, tok, ckpt_path = opened.process, opened.device, opened.tokenizer(), opened.checkpoint_path
    generator = torch.Generator(device).manual_seed(cfg.seed)
    cond = requested_text_condition(opened, cfg, cfg.n)
    n = cfg.n if cond is None else len(cond)
    wrap = instantiate(cfg.fast)
    fast = wrap(opened.net, device=device)
    if isinstance(process, TokenProcess):  # this run's token sampling: a copy, the checkpoint's process stays as it is
        process = process.sampling(**{k: cfg.get(k) for k in TOKEN_SAMPLING})
        fix, starts, t_start, steps, tps = token_starts(cfg, process, tok, generator, device, n)
    elif isinstance(process, Latent):
        fix, starts, t_start, steps, tps = latent_starts(cfg, process, opened.shape[-1], generator, device, n)
    else:
        raise UdmError(f"{ckpt_path} holds {process.describe()}, which does not generate tokens")
    model = OutputCache(fix(fast), opened.net) if ignores_time(opened.net) else fix(fast)
    sampler = with_guidance(opened.sampler(instantiate(cfg.sampler, steps=min(steps, t_start))), cfg, opened,
                            lambda guide: fix(wrap(guide, device=device)))

    start = time.perf_counter()
    chunks = [sampler(process, model, x, generator=generator, progress=cfg.progress, t_start=t_start, cond=c).cpu()
              for x, c in batches(starts, cond, cfg.batch_size)]
    seconds = time.perf_counter() - start
    ids = torch.cat(chunks)
    texts = opened.decode(ids)

    pace = f"{tps}perstep" if tps else f"{min(steps, t_start)}steps"
    stem = f"{cfg.sampler_name}-{pace}-n{len(texts)}-seed{cfg.seed}" + ("-infill" if cfg.get("template") else "")
    stem += describe_condition(cfg)
    txt = fresh_path(folder, stem, ".txt")
    txt.write_text("\n".join(texts) + "\n", encoding="utf-8")
    result: dict[str, Any] = {"texts": texts, "txt": str(txt), "seconds": seconds, "steps": len(sampler.timesteps(process, t_start)), "net": describe_net(fast),
                              "tokens_per_second": ids.numel() / seconds, "texts_per_second": len(texts) / seconds}
    if isinstance(model, OutputCache):  # x0_hat cache: steps whose x_t did not change reused the last output
        result["network_calls"] = {"made": model.calls, "reused": model.hits}
    guided = guidance_settings(cfg)
    if cond is not None or guided:
        result["condition"] = {**{k: str(v) for k, v in given(cfg).items()}, **guided}
    if cfg.metrics:
        result["metrics"] = measure(opened, ids, texts)
        if cfg.fluency:
            judge, _ = judge_for(opened, cfg.judge, cfg.cache_dir, device, cfg.progress, who="udm-generate")
            data = opened.data("fit")
            result["metrics"].update(fluency(judge, ids, data.test[: len(ids)], cfg.batch_size, **closing_ids(opened, data)))
    json_path = txt.with_suffix(".json")
    json_path.write_text(json.dumps({k: v for k, v in result.items() if k != "texts"}, indent=2, ensure_ascii=False))

    for text in texts[: cfg.show]:
        print(format_text(text), end="\n\n")
    print(f"udm-generate: {len(texts)} texts in {seconds:.1f}s ({result['texts_per_second']:.1f}/s, "
          f"{result['tokens_per_second']:.0f} tokens/s) with {cfg.sampler_name}, {result['steps']} steps" + (f", {tps} per step" if tps else "") + f", net in {result['net']}")
    if "metrics" in result:
        print(f"udm-generate: {describe_measures(result['metrics'])}")
    if result.get("network_calls", {}).get("reused"):
        calls = result["network_calls"]
        print(f"udm-generate: {calls['reused']} of {calls['made'] + calls['reused']} net outputs reused (x_t unchanged)")
    print(f"udm-generate: texts written to {txt}")
    return result
