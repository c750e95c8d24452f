"""Metrics: text quality measures (form, copying, diversity)."""

from udm.metrics.text import text_metrics

__all__ = ["text_metrics"]
