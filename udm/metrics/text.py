"""What a reader of generated fixed-length text sees, as numbers.

form accuracy: the text has the training texts' length and its punctuation exactly where
    the training texts have theirs (for quatrains: 7 characters then ， or 。, four times);
copying: the fraction of generated lines (the stretches between punctuation) that occur
    verbatim among the training lines;
distinct characters: non-punctuation characters that differ, per text.
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
    """The training texts' modal length and the positions that hold punctuation in most of them."""
    marks = punctuation()[0]
    length = Counter(len(t) for t in train_texts).most_common(1)[0][0]
    counts = Counter(i for t in train_texts if len(t) == length for i, c in enumerate(t) if c in marks)
    n = sum(len(t) == length for t in train_texts)
    return length, frozenset(i for i, k in counts.items() if k > n / 2)


def well_formed(text: str, length: int, slots: frozenset[int]) -> bool:
    marks = punctuation()[0]
    return len(text) == length and all((c in marks) == (i in slots) for i, c in enumerate(text))


def lines(text: str) -> list[str]:
    return [line for line in punctuation()[1].split(text) if line]


def text_metrics(samples: list[str], train_texts: list[str]) -> dict[str, float]:
    if not samples:
        raise ValueError("no generated texts to measure")
    length, slots = punctuation_slots(train_texts)
    known = {line for t in train_texts for line in lines(t)}
    generated = [line for s in samples for line in lines(s)]
    return {
        "form_accuracy": sum(well_formed(s, length, slots) for s in samples) / len(samples),
        "copy_rate": sum(line in known for line in generated) / max(1, len(generated)),
        "distinct_chars": sum(len(set(s) - punctuation()[0]) for s in samples) / len(samples),
        "n": len(samples),
    }


class TextMeasures(Metric):
    """text (conf/metric/text.yaml): form_accuracy, copy_rate and distinct_chars of the decoded samples against
    the checkpoint's training texts (text_metrics above)."""

    columns = ("form_accuracy", "copy_rate", "distinct_chars")
    table = (Row("form_accuracy", "form accuracy", "{:.1%}", compare_label="form acc."),
             Row("copy_rate", "copied lines", "{:.1%}"),
             Row("distinct_chars", "distinct chars", "{:.1f}", note="per text"))
    order = 40

    def why_not(self, model, context: Context) -> str | None:
        if model.modality != "text":
            return f"the text measures apply to text checkpoints; this one holds {model.modality} data"
        return None

    def compute(self, model, samples, context: Context) -> dict:
        measures = text_metrics(model.decode(samples), context.data.train_texts)
        return {k: v for k, v in measures.items() if k in self.columns}
