"""Prototypes: each class is the normalised mean of its support embeddings; queries are scored by cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pictag.heads.base import FEW_SHOT, Head, accuracy, best_scale, can_leave_one_out

DEFAULT_SCALE = 10.0


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) normalised class means of normalised features."""
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    return F.normalize(sums, dim=-1)


class PrototypeHead(Head):
    """Nearest class mean by cosine similarity (Snell et al. 2017, with cosine as in most CLIP few-shot work).

    logits = scale · f·Pᵀ. The leave-one-out estimate is exact and cheap: a held-out example is compared with its
    own class mean recomputed without it. The same held-out similarities set the softmax temperature `scale`.
    """

    name = "prototype"
    kind = FEW_SHOT

    def __init__(self, num_classes: int = 0, dim: int = 0):
        super().__init__(num_classes, dim)
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("scale", torch.tensor(DEFAULT_SCALE))

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        self.prototypes = class_prototypes(features, labels, self.num_classes)
        loo = self._leave_one_out(features, labels) if can_leave_one_out(labels) else None
        self.support_accuracy = None if loo is None else accuracy(loo, labels)
        self.scale = features.new_tensor(best_scale(loo, labels, DEFAULT_SCALE))

    def _leave_one_out(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sums = features.new_zeros(self.num_classes, features.shape[1]).index_add_(0, labels, features)
        own = F.normalize(sums[labels] - features, dim=-1)
        sims = features @ self.prototypes.T
        sims[torch.arange(len(labels), device=labels.device), labels] = (features * own).sum(dim=-1)
        return sims

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * features @ self.prototypes.T
