"""The residual cosine classifier trained on top of a fine-tuned encoder.

    logits = s · cos(f, W₀ + ΔW)

W₀ are the class prototypes (normalised class means of the training embeddings, before fine-tuning) and ΔW a
learned residual initialised at zero, so training starts from the prototype classifier, which is already good
with few shots, and never from random weights that would send large, random gradients into the unfrozen blocks.
s is a learned temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class ResidualCosineHead(torch.nn.Module):
    """Cosine classifier initialised from class prototypes plus a zero-initialised learned residual."""

    def __init__(self, prototypes: torch.Tensor, scale: float = 16.0):
        super().__init__()
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=-1))
        self.residual = torch.nn.Parameter(torch.zeros_like(self.prototypes))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))

    @property
    def weight(self) -> torch.Tensor:
        """(C, D) normalised class weights."""
        return F.normalize(self.prototypes + self.residual, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.normalize(features.float(), dim=-1) @ self.weight.T
