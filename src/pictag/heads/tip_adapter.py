"""Tip-Adapter (Zhang et al. 2022): a training-free key-value cache of support embeddings and one-hot labels.

    logits(f) = text_scale · f·Tᵀ  +  α · exp(-β (1 - f·Kᵀ)) · V

K are the support embeddings, V their one-hot labels and T the zero-shot text prototypes of the class names (CLIP
models). Image-only models have no T and use the cache alone; α then only sets the temperature of the scores.
α and β are chosen on a grid by leave-one-out on the support set: each example is scored by the cache without
its own entry; the best accuracy wins, and ties go to the lower held-out log-likelihood loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pictag.heads.base import FEW_SHOT, Head, accuracy, can_leave_one_out

TEXT_SCALE = 100.0  # CLIP's logit scale, as in the Tip-Adapter reference code
BETAS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 9.0, 12.0, 16.0)
ALPHAS_WITH_TEXT = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
ALPHAS_CACHE_ONLY = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# The paper's defaults, used when the support set is too small for leave-one-out (one example of a class).
DEFAULT_ALPHA_BETA = {True: (1.0, 5.5), False: (10.0, 5.5)}


class TipAdapterHead(Head):
    """Training-free cache model, blended with zero-shot text prototypes when the encoder has text.

    Args:
        num_classes: Classes.
        dim: Length of the features.
        support: Entries of the cache (support examples).
        text: Whether text prototypes are blended in.
    """

    name = "tip-adapter"
    kind = FEW_SHOT

    def __init__(self, num_classes: int = 0, dim: int = 0, support: int = 0, text: bool = False):
        super().__init__(num_classes, dim)
        self.register_buffer("keys", torch.zeros(support, dim))
        self.register_buffer("values", torch.zeros(support, num_classes))
        self.register_buffer("text_prototypes", torch.zeros(num_classes, dim) if text else None)
        self.register_buffer("alpha", torch.tensor(DEFAULT_ALPHA_BETA[text][0]))
        self.register_buffer("beta", torch.tensor(DEFAULT_ALPHA_BETA[text][1]))

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        self.keys = features
        self.values = F.one_hot(labels, self.num_classes).float()
        self.text_prototypes = text_prototypes
        with_text = text_prototypes is not None
        alpha, beta = DEFAULT_ALPHA_BETA[with_text]
        if can_leave_one_out(labels):
            affinity = features @ features.T
            text = self._text_logits(features)
            best = None
            for b in BETAS:
                cache = torch.exp(-b * (1 - affinity)).fill_diagonal_(0.0) @ self.values
                for a in ALPHAS_WITH_TEXT if with_text else ALPHAS_CACHE_ONLY:
                    logits = text + a * cache
                    key = (accuracy(logits, labels), -F.cross_entropy(logits, labels).item())
                    if best is None or key > best[0]:
                        best = (key, a, b)
            (self.support_accuracy, _), alpha, beta = best
        self.alpha, self.beta = features.new_tensor(alpha), features.new_tensor(beta)

    def _text_logits(self, features: torch.Tensor) -> torch.Tensor | float:
        return 0.0 if self.text_prototypes is None else TEXT_SCALE * features @ self.text_prototypes.T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cache = torch.exp(-self.beta * (1 - features @ self.keys.T)) @ self.values
        return self._text_logits(features) + self.alpha * cache

    def config(self) -> dict:
        return {**super().config(), "support": len(self.keys), "text": self.text_prototypes is not None}
