"""The few-shot head contract: fit on a labelled support set of embeddings, then score query embeddings.

Every head works on L2-normalised features from any encoder (CLIP or image-only). A CLIP encoder may also pass the
text prototypes of the class names, which heads that can use them blend in. Each fitted head reports
`support_accuracy`, its held-out accuracy estimated on the support set alone (leave-one-out, or cross-validation
for the linear probe), which is what `auto` compares and what a user gets as the measured accuracy of a task.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from pictag.errors import PictagError


def scores_from_logits(logits: torch.Tensor, temperature: float = 1.0, bias: float | None = None) -> torch.Tensor:
    """Scores of (N, C) logits: a softmax over the classes, or with a `bias` (SigLIP) a sigmoid per class.

    `temperature` divides the logits first (calibration); the bias is added after, as the weights were trained.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if bias is not None:
        return torch.sigmoid(logits + bias)
    return logits.softmax(dim=-1)


class Head(ABC):
    """A classifier over embeddings, fitted on a few labelled examples per class.

    Attributes:
        name: The registry name (`--method`).
        num_classes: Classes seen by `fit`; labels are 0..num_classes-1.
        support_accuracy: Held-out accuracy estimated on the support set, or None when the support set is too
            small to hold anything out (one example of some class).
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.num_classes = 0
        self.support_accuracy: float | None = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None = None) -> Head:
        """Fit on support embeddings.

        Args:
            features: (N, D) L2-normalised support embeddings.
            labels: (N,) class indices; every class 0..C-1 must have at least one example.
            text_prototypes: (C, D) normalised text embeddings of the class names (CLIP models only), or None.

        Returns:
            self, fitted.

        Raises:
            PictagError: empty support set, a class without examples, or prototypes that do not fit.
        """
        features, labels = features.float().cpu(), labels.long().cpu()
        self.num_classes = check_support(features, labels, text_prototypes)
        if text_prototypes is not None:
            text_prototypes = text_prototypes.float().cpu()
        self._fit(features, labels, text_prototypes)
        return self

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(M, C) class probabilities of L2-normalised query embeddings."""
        if not self.num_classes:
            raise PictagError(f"the {self.name} head is not fitted: call fit(support_features, labels) first")
        return scores_from_logits(self.logits(features.float().cpu()))

    @abstractmethod
    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None: ...

    @abstractmethod
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(M, C) unnormalised class scores; `predict` is their softmax."""


HEADS: dict[str, Callable[[], Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator that makes a head available as `create_head(name)` and `--method name`."""

    def register(cls: type[Head]) -> type[Head]:
        cls.name = name
        HEADS[name] = cls
        return cls

    return register


def _load_heads() -> None:
    # Importing registers them.
    from pictag.heads import auto, linear_probe, prototype, tip_adapter  # noqa: F401


def list_heads() -> list[str]:
    """Names of the registered few-shot methods."""
    _load_heads()
    return list(HEADS)


def create_head(name: str) -> Head:
    """A new, unfitted head by method name ("prototype", "tip-adapter", "linear-probe", "auto").

    Raises:
        PictagError: unknown method; the message lists the known ones.
    """
    _load_heads()
    if name not in HEADS:
        raise PictagError(f"unknown few-shot method {name!r}: use one of {', '.join(HEADS)}")
    return HEADS[name]()


def check_support(features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> int:
    """The number of classes of a support set, after checking that every class has an example."""
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise PictagError(f"support features {tuple(features.shape)} and labels {tuple(labels.shape)} do not pair up")
    if not len(labels):
        raise PictagError("the support set is empty: give at least one labelled image per class")
    counts = torch.bincount(labels)
    if labels.min() < 0 or (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise PictagError(f"support classes {missing} have no examples: every class needs at least one image")
    if text_prototypes is not None and tuple(text_prototypes.shape) != (len(counts), features.shape[1]):
        raise PictagError(
            f"text prototypes are {tuple(text_prototypes.shape)}, expected ({len(counts)}, {features.shape[1]})"
        )
    return len(counts)


def can_leave_one_out(labels: torch.Tensor) -> bool:
    """Whether every class keeps an example when any one is held out."""
    return bool(torch.bincount(labels).min() >= 2)


def best_scale(logits: torch.Tensor, labels: torch.Tensor, default: float) -> float:
    """The softmax temperature (multiplier of `logits`) with the lowest held-out negative log-likelihood.

    It changes no prediction, only how much the scores can be trusted as probabilities.
    """
    if logits is None:
        return default
    grid = [math.exp(x) for x in torch.linspace(0.0, math.log(100.0), 24).tolist()]
    nll = [torch.nn.functional.cross_entropy(s * logits, labels).item() for s in grid]
    return grid[min(range(len(grid)), key=nll.__getitem__)]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of (N, C) scores against (N,) labels."""
    return (logits.argmax(dim=-1) == labels).float().mean().item()
