"""The class centres of an ArcFace-trained embedding, as a head: logits = s · max over sub-centres of cos(f, W).

Training adds the angular margin to the target class (`pictag.train.losses.MarginLoss`); at inference the head
scores the plain cosines, so a run's classes can be predicted by their centres (`classify --model RUN`), while the
embedding itself serves retrieval and kNN galleries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pictag.heads.base import TRAINED, Head


class ArcFaceHead(Head):
    """Normalised class centres (sub-center ArcFace when `subcenters` > 1) over L2-normalised embeddings.

    Args:
        prototypes: (C, D) class prototypes the centres start from; sub-centres start from them plus small seeded
            noise, so that they can part.
        scale: s, the multiplier of the cosines (ArcFace's scale).
        subcenters: Centres per class; a class's cosine is that of its nearest centre.
        num_classes: C, when no prototypes are given (a head about to load its state).
        dim: D, when no prototypes are given.
    """

    name = "arcface"
    kind = TRAINED

    def __init__(
        self,
        prototypes: torch.Tensor | None = None,
        scale: float = 64.0,
        subcenters: int = 1,
        *,
        num_classes: int = 0,
        dim: int = 0,
    ):
        prototypes = torch.zeros(num_classes, dim) if prototypes is None else prototypes.float()
        super().__init__(*prototypes.shape)
        self.scale, self.subcenters = float(scale), subcenters
        centres = prototypes[:, None, :].repeat(1, subcenters, 1)
        if subcenters > 1:
            noise = torch.randn(centres.shape, generator=torch.Generator().manual_seed(0))
            centres = centres + 0.01 * noise
        self.weight = torch.nn.Parameter(F.normalize(centres, dim=-1).reshape(-1, self.dim))

    def cosines(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) cosine of each embedding with each class's nearest centre, in float32."""
        cos = F.normalize(features.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T
        return cos.unflatten(-1, (self.num_classes, self.subcenters)).amax(dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosines(features)

    def config(self) -> dict:
        return {**super().config(), "scale": self.scale, "subcenters": self.subcenters}
