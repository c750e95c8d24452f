"""kid: the kernel (MMD) distance between the samples' features and the held-out images', over random subsets
(udm.metrics.fid.kernel_distance; conf/metric/kid.yaml)."""

from __future__ import annotations

from torch import Tensor

from udm.metrics.base import Context, Row
from udm.metrics.fid import EXTRACTOR_COLUMNS, EXTRACTOR_NOTE, FeatureMetric, kernel_distance


class KID(FeatureMetric):
    """kid_mean, kid_std over `subsets` subsets of `subset_size` images (capped at n), drawn with the eval's seed."""

    columns = (*EXTRACTOR_COLUMNS, "kid_mean", "kid_std", "kid_subsets", "kid_subset_size")
    table = (Row("kid_mean", "KID", "{:.4f}",
                 note="± {kid_std:.4f} over {kid_subsets} subsets of {kid_subset_size}; " + EXTRACTOR_NOTE),)
    order = 20

    def __init__(self, subsets: int = 100, subset_size: int = 100):
        self.subsets, self.subset_size = int(subsets), int(subset_size)

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        classifier, out = self.features(model, context)
        mean, std, size = kernel_distance(context.data.test, samples, classifier, self.subsets, self.subset_size, context.seed)
        out.update(kid_mean=mean, kid_std=std, kid_subsets=self.subsets, kid_subset_size=size)
        return out
