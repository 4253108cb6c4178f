"""The `fewshot` task: `pictag fewshot-train`'s residual cosine head on the last blocks of an image encoder.

A classifier whose head is `finetuned` (cosine similarity to the class prototypes plus a learned residual) with
the few-shot habits: batch-norm statistics stay as pretrained (as every task's do), and milder augmentation than timm's ImageNet defaults (scale 0.08, jitter 0.4): with a few shots per class, a crop of
8 % of an image often loses the object, and the pretrained features need nudging, not relearning.
"""

from __future__ import annotations

from pictag.heads.trained import ResidualCosineHead
from pictag.train.tasks.classifier import ClassifierTask, prototypes


class FewshotTask(ClassifierTask):
    """Backbone + residual cosine head (`finetuned`), cross-entropy; groups "backbone" and "head"."""

    name = "fewshot"
    augment = {"scale": (0.5, 1.0), "color_jitter": 0.2}

    @classmethod
    def build(cls, encoder, data, cfg) -> FewshotTask:
        head = ResidualCosineHead(prototypes(encoder, data, cfg))
        return cls(encoder, head, data.classes, cfg.label_smoothing)

    def head_features(self, data, cfg) -> None:
        return None  # the residual head starts as the prototype classifier: a few shots leave nothing to sweep on
