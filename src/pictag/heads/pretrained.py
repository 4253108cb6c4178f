"""`pretrained`: a backbone's own classifier, as its weights were trained (ImageNet's 1,000 classes for most timm
weights), so that an image-only model classifies without labels or training.

The classifier was trained on the raw pooled features, not on L2-normalised ones: normalising would change the
logits' scale against the bias, and so the scores and even the ranking. The head therefore declares
`normalized_input = False`, and the pipeline asks the encoder for unnormalised features (`encode_image(...,
normalize=False)`). It owns a copy of the classifier's weights; the encoder keeps its own, outside its parameters.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources

import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.heads.base import TRAINED, Head
from pictag.models.base import Encoder

log = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000


@cache
def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's class names in class-index order, shipped with pictag (`pictag/data/imagenet_classes.txt`)."""
    text = (resources.files("pictag") / "data" / "imagenet_classes.txt").read_text()
    names = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    assert len(names) == IMAGENET_CLASSES, f"imagenet_classes.txt holds {len(names)} names"
    return names


def default_classes(num_classes: int) -> list[str]:
    """ImageNet's names for a 1,000-class classifier; otherwise "class_<i>" (pictag ships no other class list)."""
    if num_classes == IMAGENET_CLASSES:
        return list(imagenet_classes())
    log.warning(
        "a %d-class classifier is not ImageNet-1k's: its classes are named class_0 ... class_%d",
        num_classes,
        num_classes - 1,
    )
    return [f"class_{i}" for i in range(num_classes)]


class PretrainedHead(Head):
    """The classifier a backbone was trained with: logits = f·Wᵀ + b on its unnormalised pooled features f.

    Args:
        encoder: The encoder whose `pretrained_classifier` this head applies (it lives on the encoder's device).
        classes: Class names; ImageNet's when the classifier has 1,000 classes and none are given.
        num_classes: C, when no encoder is given (a head about to load its state).
        dim: D, likewise.

    Attributes:
        classes: The name of each class, in logit order.

    Raises:
        PictagError: the encoder has no classifier of its own, or `classes` does not fit it.
    """

    name = "pretrained"
    kind = TRAINED
    normalized_input = False

    def __init__(
        self,
        encoder: Encoder | None = None,
        classes: list[str] | None = None,
        *,
        num_classes: int = 0,
        dim: int = 0,
    ):
        if encoder is None:
            weight, bias = torch.zeros(num_classes, dim), torch.zeros(num_classes)
        elif encoder.pretrained_classifier is None:
            raise PictagError(
                f"{encoder.spec} has no classifier of its own for --head pretrained (a CLIP model, a features-only "
                "checkpoint or a headless weight tag): give it the full timm checkpoint, or classify with --labels "
                "on a CLIP-family model"
            )
        else:
            weight, bias = encoder.pretrained_classifier
        super().__init__(*weight.shape)
        self.weight = torch.nn.Parameter(weight.detach().float().clone())
        self.bias = torch.nn.Parameter(bias.detach().float().clone())
        self.classes = list(classes) if classes is not None else default_classes(self.num_classes)
        if len(self.classes) != self.num_classes:
            raise PictagError(f"{len(self.classes)} class names given for a {self.num_classes}-class classifier")
        if encoder is not None:
            self.to(encoder.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features.to(self.weight.device, torch.float32), self.weight, self.bias)

    def config(self) -> dict:
        config = super().config()
        if self.num_classes != IMAGENET_CLASSES or tuple(self.classes) != imagenet_classes():
            config["classes"] = self.classes
        return config
