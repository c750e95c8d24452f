"""What a reader of generated text sees, as numbers.

form accuracy: the text has the training texts' length and its punctuation exactly where
    the training texts have theirs (for quatrains: 7 characters then ， or 。, four times);
    defined where the training texts have a form, one length in characters: not for
    variable-length text, nor for a subword tokenizer's fixed token count (texts of many
    character lengths), where it is left out rather than scored against a modal length;
copying: the fraction of generated lines (the stretches between punctuation, surrounding
    spaces stripped) that occur verbatim among the training lines;
distinct characters: non-punctuation, non-space characters that differ, per text;
lengths (variable-length text only): mean length and the distance between the length
    histograms of generated and held-out texts (udm.metrics.lengths).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

from udm.metrics.base import Context, Metric, Row


@cache
def punctuation() -> tuple[frozenset[str], re.Pattern]:
    """The tokenizer's punctuation and a pattern splitting at it (imported here: udm.data pulls in Lightning,
    and udm-compare imports this file for the text columns)."""
    from udm.data.text import PUNCTUATION

    return PUNCTUATION, re.compile("[" + re.escape("".join(sorted(PUNCTUATION))) + "]")


def punctuation_slots(train_texts: list[str]) -> tuple[int, frozenset[int]]:
    """The training texts' modal length and the positions that hold punctuation in most of them (of the texts of
    that length)."""
    marks = punctuation()[0]
    length = Counter(len(t) for t in train_texts).most_common(1)[0][0]
    counts = Counter(i for t in train_texts if len(t) == length for i, c in enumerate(t) if c in marks)
    n = sum(len(t) == length for t in train_texts)
    return length, frozenset(i for i, k in counts.items() if k > n / 2)


def well_formed(text: str, length: int, slots: frozenset[int]) -> bool:
    marks = punctuation()[0]
    return len(text) == length and all((c in marks) == (i in slots) for i, c in enumerate(text))


def lines(text: str) -> list[str]:
    """The stretches of `text` between punctuation, without the spaces around them (words keep theirs)."""
    return [line for line in (part.strip() for part in punctuation()[1].split(text)) if line]


def characters(text: str) -> set[str]:
    """The distinct characters of `text` that are neither punctuation nor space."""
    return {c for c in text if not c.isspace()} - punctuation()[0]


def has_form(train_texts: list[str]) -> bool:
    """Whether the training texts share one length in characters, the form that form accuracy checks."""
    return len({len(t) for t in train_texts}) == 1


def text_metrics(samples: list[str], train_texts: list[str]) -> dict[str, float]:
    """form_accuracy (only where the training texts have a form), copy_rate, distinct_chars and n of `samples`."""
    if not samples:
        raise ValueError("no generated texts to measure")
    known = {line for t in train_texts for line in lines(t)}
    generated = [line for s in samples for line in lines(s)]
    measures = {}
    if has_form(train_texts):
        length, slots = punctuation_slots(train_texts)
        measures["form_accuracy"] = sum(well_formed(s, length, slots) for s in samples) / len(samples)
    return measures | {
        "copy_rate": sum(line in known for line in generated) / max(1, len(generated)),
        "distinct_chars": sum(len(characters(s)) for s in samples) / len(samples),
        "n": len(samples),
    }


def held_out_reference(held_out: list[str], train_texts: list[str]) -> dict[str, float]:
    """The same measures for held-out real texts (real_form_accuracy, real_copy_rate, real_distinct_chars): what a
    perfect model would score, e.g. the lines real poems share with the training split."""
    return {f"real_{k}": v for k, v in text_metrics(held_out, train_texts).items() if k != "n"}


class TextMeasures(Metric):
    """text (conf/metric/text.yaml): form_accuracy, copy_rate and distinct_chars of the decoded samples against
    the checkpoint's training texts (text_metrics above); for variable-length text also the length measures of
    udm.metrics.lengths against the held-out texts."""

    LENGTHS = ("mean_length", "held_out_mean_length", "length_tv", "length_tv_train")
    REAL = ("real_form_accuracy", "real_copy_rate", "real_distinct_chars")
    columns = ("form_accuracy", "copy_rate", "distinct_chars", *REAL, *LENGTHS)
    table = (Row("form_accuracy", "form accuracy", "{:.1%}", note="held-out real texts {real_form_accuracy:.1%}",
                 compare_label="form acc."),
             Row("copy_rate", "copied lines", "{:.1%}", note="held-out real texts {real_copy_rate:.1%}"),
             Row("distinct_chars", "distinct chars", "{:.1f}", note="per text; held-out real texts {real_distinct_chars:.1f}"),
             Row("mean_length", "mean length", "{:.1f}", note="tokens; held-out texts {held_out_mean_length:.1f}",
                 compare_label="mean len."),
             Row("length_tv", "length TV", "{:.3f}", note="vs held-out lengths; training texts at this n: "
                 "{length_tv_train:.3f}", compare_label="len. TV"))
    order = 40

    def why_not(self, model, context: Context) -> str | None:
        if model.modality != "text":
            return f"the text measures apply to text checkpoints; this one holds {model.modality} data"
        return None

    def compute(self, model, samples, context: Context) -> dict:
        data = context.data
        measures = text_metrics(model.decode(samples), data.train_texts)
        measures |= held_out_reference(data.test_texts[: len(samples)], data.train_texts)
        if getattr(data, "variable", False):
            from udm.data.tokenizers import end_and_pad
            from udm.metrics.lengths import length_measures

            measures |= length_measures(samples, data.test, data.train, *end_and_pad(model.tokenizer()))
        return {k: v for k, v in measures.items() if k in self.columns}
