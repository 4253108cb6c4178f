"""Additive-margin softmax losses on cosines: ArcFace (angular margin) and CosFace (cosine margin).

    loss = MarginLoss("arcface", scale=64, margin=0.5)(cosines, labels)    # cosines: (N, C) from ArcFaceHead

ArcFace replaces the target class's cos θ by cos(θ + m) (Deng et al. 2019), CosFace by cos θ - m (Wang et al. 2018);
the logits are s times that, under cross-entropy. Past θ = π - m, cos(θ + m) would rise again, so ArcFace continues
there with cos θ - m·sin m, as insightface and pytorch-metric-learning do; cos(θ + m) is expanded as
cos θ cos m - sin θ sin m, whose gradient stays finite at cos θ = ±1 where that of acos does not.

The loss runs in float32 with autocast off: with s = 64, fp16 logits overflow (65,504) and the margin's sin θ of a
near-1 cosine rounds to 0, which is where other tools' ArcFace NaNs under fp16 come from.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from pictag.errors import PictagError

Kind = Literal["arcface", "cosface"]


class MarginLoss(torch.nn.Module):
    """Cross-entropy of s · (cosines with a margin on the target class).

    Args:
        kind: "arcface" (margin m in radians on the angle) or "cosface" (m subtracted from the cosine).
        scale: s.
        margin: m; `margin` may be changed between steps (the warm-up sets it to 0).
    """

    def __init__(self, kind: Kind = "arcface", scale: float = 64.0, margin: float = 0.5):
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise PictagError(f"unknown margin loss {kind!r}: use arcface or cosface")
        if scale <= 0 or margin < 0:
            raise PictagError(f"--arcface-s must be above 0 and --arcface-m at least 0, not {scale} and {margin}")
        self.kind, self.scale, self.margin = kind, scale, margin

    def logits(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 logits: s · cosines, the target class's with its margin."""
        cosines = cosines.float()
        target = cosines.gather(1, labels[:, None])
        m = self.margin
        if self.kind == "cosface":
            marked = target - m
        else:
            sine = (1.0 - target * target).clamp(min=1e-7).sqrt()
            marked = torch.where(
                target >= math.cos(math.pi - m), target * math.cos(m) - sine * math.sin(m), target - m * math.sin(m)
            )
        return self.scale * cosines.scatter(1, labels[:, None], marked)

    def forward(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(cosines.device.type, enabled=False):
            return F.cross_entropy(self.logits(cosines, labels), labels)
