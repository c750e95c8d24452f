"""Metrics: the Metric base and its registry (udm.metrics.base), the metrics udm-eval scores (one file each:
fid, class_accuracy, kid, bpd, text, fluency, nelbo, fid_inception, each registered by a YAML file in udm/conf/metric/),
and their math (fid.py, likelihood.py, text.py, fluency.py, inception.py: the FID Inception-v3 papers' FID uses)."""

from udm.metrics.base import Context, Metric, Row, load_metrics, metric_classes


def __getattr__(name: str):  # text_metrics on first use: udm.data (which it needs) pulls in Lightning
    if name == "text_metrics":
        from udm.metrics.text import text_metrics

        return text_metrics
    raise AttributeError(f"module 'udm.metrics' has no attribute {name!r}")


__all__ = ["Context", "Metric", "Row", "load_metrics", "metric_classes", "text_metrics"]
