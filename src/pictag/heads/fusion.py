"""The fusion head: an MLP over the concatenated image and text embeddings of a product (`pictag train --task fusion`).

Its input is [image embedding | text embedding], each L2-normalised by itself and concatenated with no extra
projection; the head is Dropout, Linear(hidden 512), GELU, Dropout, Linear, the recipe of the Kaggle product
classifiers. A head may also look at one modality only (the `--ablate` heads), on the same input.
"""

from __future__ import annotations

from typing import Literal

import torch

from pictag.errors import PictagError
from pictag.heads.base import TRAINED, Head

Modality = Literal["both", "image", "text"]


class FusionHead(Head):
    """MLP over [image | text] embeddings (or one of them).

    Args:
        num_classes: Classes.
        image_dim: Length of the image embedding (the first columns of the input).
        text_dim: Length of the text embedding (the columns after it).
        hidden: Width of the hidden layer.
        dropout: Dropout before each Linear.
        modality: Which part of the input the head reads: both, image or text.
    """

    name = "fusion"
    kind = TRAINED

    def __init__(
        self,
        num_classes: int,
        image_dim: int,
        text_dim: int,
        hidden: int = 512,
        dropout: float = 0.2,
        modality: Modality = "both",
    ):
        if modality not in ("both", "image", "text"):
            raise PictagError(f"fusion head modality must be both, image or text, not {modality!r}")
        super().__init__(num_classes, image_dim + text_dim)
        self.image_dim, self.text_dim = image_dim, text_dim
        self.hidden, self.dropout, self.modality = hidden, dropout, modality
        width = {"both": image_dim + text_dim, "image": image_dim, "text": text_dim}[modality]
        self.mlp = torch.nn.Sequential(
            torch.nn.Dropout(dropout),
            torch.nn.Linear(width, hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.modality == "image":
            features = features[:, : self.image_dim]
        elif self.modality == "text":
            features = features[:, self.image_dim :]
        return self.mlp(features.float())

    def config(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "modality": self.modality,
        }
