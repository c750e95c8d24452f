"""class_accuracy: how often udm's own classifier (the FID extractor's class head) assigns a conditionally drawn
sample the class it was drawn for (udm-eval labels=all on a class-conditional checkpoint)."""

from __future__ import annotations

from torch import Tensor

from udm.metrics.base import Context, Metric, Row
from udm.metrics.fid import extractor, has_labels, on_saved_pixels


class ClassAccuracy(Metric):
    columns = ("class_accuracy", "class_accuracy_per_class")
    table = (Row("class_accuracy", "class accuracy", "{:.1%}", note="udm's classifier agrees with the requested class",
                 compare_label="class acc", compare_fmt="{:.1%}"),)
    order = 15

    def why_not(self, model, context: Context) -> str | None:
        if context.conditions is None:
            return ("class accuracy scores samples drawn for given classes: evaluate a class-conditional checkpoint "
                    "with labels=all")
        if not has_labels(model, context):
            return f"class accuracy needs udm's classifier of the data, and {type(context.data).__name__} data has no labels"
        return None

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        classifier, _ = extractor(model, context)  # trained here when not cached (with gradients)
        device = next(classifier.parameters()).device
        predicted = on_saved_pixels(classifier.eval(), samples, context.batch_size, device).argmax(-1)
        wanted = context.conditions.cpu()
        hits = predicted == wanted
        per_class = {int(k): float(hits[wanted == k].float().mean()) for k in wanted.unique()}
        return {"class_accuracy": float(hits.float().mean()), "class_accuracy_per_class": per_class}
