"""fluency: how a language model udm trains on the data reads the generated texts, and how varied they are.

gen_ppl       generative perplexity: exp of the mean token NLL, over all tokens of all samples, under udm's
              judge (udm.jobs.judge: a small GPT-2 trained on the checkpoint's training split; every text is read
              from a start symbol, so all its tokens count)
entropy       unigram entropy per text: -sum_v p_v log p_v of the text's own token histogram, in nats, averaged
              over texts. A text of one repeated token scores 0, one of k distinct tokens log k: low perplexity
              alone rewards repetition, which this shows.
real_ppl, real_entropy   the same for the first n held-out real texts (n: as many as the samples), the reference
              every number is read against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.metrics.base import Context, Metric, Row


def as_ids(texts: Tensor | Sequence[Sequence[int]], what: str = "texts") -> Tensor:
    """Token ids [N, L] (torch.long) of at least one text, from a tensor or equally long lists of ids."""
    try:
        ids = torch.as_tensor(texts, dtype=torch.long) if not isinstance(texts, Tensor) else texts
    except (ValueError, TypeError):
        raise UdmError(f"the {what} must be token ids of equal length, [N, L]") from None
    if ids.dim() != 2 or len(ids) == 0 or ids.shape[1] == 0:
        raise UdmError(f"no {what} to score: fluency needs token ids [N, L] of at least one text, got {list(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex():
        raise UdmError(f"the {what} must be integer token ids, got {ids.dtype}")
    return ids.long()


def read(ids: Tensor, end: int | None) -> Tensor:
    """[N, L] bool: the tokens a text consists of, up to and including its first end token (variable-length text:
    what follows is padding the judge should not be credited for); every token when `end` is None."""
    if end is None:
        return torch.ones(ids.shape, dtype=torch.bool)
    return (ids == end).long().cumsum(-1) - (ids == end).long() == 0


@torch.no_grad()
def generative_perplexity(judge, texts: Tensor | Sequence[Sequence[int]], batch_size: int = 256, end: int | None = None) -> float:
    """exp of the mean token NLL of texts [N, L] under the judge (a udm.nets.causal_lm.CausalLM, on its device),
    over their tokens (all N * L, or up to each text's first `end` token); the judge's start symbol is not a token
    of the text and is not scored."""
    ids = as_ids(texts)
    judge.eval()
    device = next(judge.parameters()).device
    nll = torch.cat([judge.nll(x.to(device)).double().cpu() for x in ids.split(batch_size)])
    return float(nll[read(ids, end)].mean().exp())


def unigram_entropy(texts: Tensor | Sequence[Sequence[int]], end: int | None = None, pad: int | None = None) -> Tensor:
    """The entropy in nats of each text's token histogram, [N] (float64); for variable-length text (`end`, `pad`)
    of the tokens before its first end token, padding left out."""
    ids = as_ids(texts)
    kept = read(ids, end) & (ids != end if end is not None else True) & (ids != pad if pad is not None else True)
    vocab = int(ids.max()) + 1
    rows = torch.arange(len(ids)).unsqueeze(1).expand_as(ids)
    counts = torch.bincount((rows * vocab + ids)[kept], minlength=len(ids) * vocab).view(len(ids), vocab).double()
    p = counts / counts.sum(1, keepdim=True).clamp(min=1)
    return -torch.special.xlogy(p, p).sum(1)


def fluency(judge, samples: Tensor | Sequence[Sequence[int]], real: Tensor | Sequence[Sequence[int]],
            batch_size: int = 256, end: int | None = None, pad: int | None = None) -> dict[str, float]:
    """gen_ppl and entropy of the samples, real_ppl and real_entropy of the real texts (ids [N, L] each); for
    variable-length text pass its end and pad ids (udm.data.tokenizers.end_and_pad)."""
    samples, real = as_ids(samples, "generated texts"), as_ids(real, "real texts")
    return {"gen_ppl": generative_perplexity(judge, samples, batch_size, end),
            "real_ppl": generative_perplexity(judge, real, batch_size, end),
            "entropy": float(unigram_entropy(samples, end, pad).mean()),
            "real_entropy": float(unigram_entropy(real, end, pad).mean())}


def closing_ids(model, data) -> dict[str, int]:
    """{'end': ..., 'pad': ...} for variable-length text, else {} (fixed-length rows are read whole)."""
    if not getattr(data, "variable", False):
        return {}
    from udm.data.tokenizers import end_and_pad

    end, pad = end_and_pad(model.tokenizer())
    return {"end": end, "pad": pad}


def judge_for(model, judge_cfg=None, cache_dir=None, device="cpu", progress: bool = True, who: str = "udm-eval"):
    """The judge of a text checkpoint's data on `device` (trained when not cached) and its record; refused when it
    reads another tokenizer than the checkpoint's (its ids would mean other characters)."""
    from udm.jobs.judge import ensure_judge

    judge, info = ensure_judge(model.recipe["data"], judge_cfg, cache_dir, device, progress=progress, who=who)
    if info["tokenizer"] != model.recipe["tokenizer"]:
        raise UdmError(f"the fluency judge {info['path']} was trained with another tokenizer than {model.checkpoint_path}'s "
                       f"(has the text file changed?); delete it or run udm-features with the checkpoint's data and retrain=true")
    return judge, info


class Fluency(Metric):
    """fluency (conf/metric/fluency.yaml): gen_ppl and entropy of the samples, real_ppl and real_entropy of as many
    held-out texts; the judge's id (fluency_judge: perplexities compare only under one judge) and the number of
    real texts (fluency_real_texts)."""

    columns = ("gen_ppl", "real_ppl", "entropy", "real_entropy", "fluency_real_texts", "fluency_judge")
    table = (Row("gen_ppl", "gen. perplexity", "{:.1f}", note="under udm's judge; real held-out texts {real_ppl:.1f}",
                 compare_label="gen PPL"),
             Row("entropy", "unigram entropy", "{:.3f}", note="nats per text; real held-out texts {real_entropy:.3f}",
                 compare_label="entropy"))
    order = 42

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def why_not(self, model, context: Context) -> str | None:
        if model.modality != "text":
            return f"fluency applies to text checkpoints; this one holds {model.modality} data"
        return None

    def compute(self, model, samples: Tensor, context: Context) -> dict[str, Any]:
        if "judge" not in context.shared:
            context.shared["judge"] = judge_for(model, context.cfg.judge, context.cfg.get("cache_dir"), context.device,
                                                context.progress)
        judge, info = context.shared["judge"]
        real = context.data.test[: len(samples)]
        return {**fluency(judge, samples, real, self.batch_size, **closing_ids(model, context.data)), "fluency_real_texts": len(real),
                "fluency_judge": info["id"]}
