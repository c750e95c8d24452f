"""class_diversity: how varied the samples drawn for one class are, against the held-out images of that class.

For every requested class k, the mean pairwise distance between the samples' features (udm's classifier, the
FID extractor's feature layer) divided by the same mean over the held-out images of class k; the score is the
mean of these ratios over the classes. 1 means the samples of a class vary as much as real images of it do;
guidance that collapses a class onto a few typical digits drives it down while class accuracy rises.
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.metrics.base import Context, Metric, Row
from udm.metrics.fid import extractor, has_labels, on_saved_pixels


def mean_pairwise_distance(features: Tensor) -> float:
    """The mean Euclidean distance over all pairs i != j of the rows."""
    n = len(features)
    return float(torch.cdist(features, features).sum() / (n * (n - 1)))


class ClassDiversity(Metric):
    columns = ("class_diversity", "class_diversity_per_class")
    table = (Row("class_diversity", "within-class diversity", "{:.2f}",
                 note="mean pairwise feature distance per class / the held-out images' (1: as varied as the data)",
                 compare_label="diversity", compare_fmt="{:.2f}"),)
    order = 16

    def why_not(self, model, context: Context) -> str | None:
        if context.conditions is None or model.modality != "image":
            return "within-class diversity scores images drawn for given classes: evaluate a class-conditional checkpoint with labels=all"
        if not has_labels(model, context) or getattr(context.data, "test_cond", None) is None:
            return f"within-class diversity needs udm's classifier and labelled held-out images, which {type(context.data).__name__} data lacks"
        return None

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        classifier, _ = extractor(model, context)
        wanted, data = context.conditions.cpu(), context.data
        features, device = classifier.eval().features, next(classifier.parameters()).device
        fake = on_saved_pixels(features, samples, context.batch_size, device)
        real = on_saved_pixels(features, data.test, context.batch_size, device)
        per_class = {}
        for k in wanted.unique().tolist():
            mine, theirs = fake[wanted == k], real[data.test_cond == k]
            if len(mine) > 1 and len(theirs) > 1:
                per_class[k] = mean_pairwise_distance(mine) / mean_pairwise_distance(theirs)
        if not per_class:
            return {}
        return {"class_diversity": sum(per_class.values()) / len(per_class), "class_diversity_per_class": per_class}
