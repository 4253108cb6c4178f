"""A backbone followed by a learned embedding, as metric learning trains it (`pictag train --task arcface`).

    encoder = EmbeddingEncoder(create_model("timm:tf_efficientnet_lite0"), dim=512)   # Linear 1280 -> 512, BatchNorm
    encoder.encode_image(pixels)                                                       # (N, 512), L2-normalised

It is an `Encoder` like any other: `embed`, `search`, `index-embeddings`, the store and `classify --gallery` take it
unchanged, and a run directory rebuilds it from `pictag.json`'s "embedding" entry (`embedding_config()`).
"""

from __future__ import annotations

import torch

from pictag.errors import PictagError
from pictag.models.base import Encoder


class EmbeddingEncoder(Encoder):
    """`backbone` then Linear to `dim` and an optional BatchNorm; `encode_image` L2-normalises the result.

    The parameters are the backbone's `module` (its state-dict keys unchanged, so `--unfreeze-blocks`, layer decay
    and the run format find them where they always are) and `neck`.

    Args:
        backbone: The pretrained encoder whose pooled image features are projected.
        dim: Length of the embedding.
        batchnorm: Batch-normalise the projected embedding (the "BNNeck" of re-identification models).
        in_dim: The backbone's feature length, when rebuilt from a run (checked against the backbone).

    Raises:
        PictagError: a dimension below 1, or an `in_dim` the backbone does not have.
    """

    def __init__(self, backbone: Encoder, dim: int, batchnorm: bool = True, in_dim: int | None = None):
        if dim < 1:
            raise PictagError(f"--embed-dim must be at least 1, not {dim}")
        if in_dim is not None and in_dim != backbone.embed_dim:
            raise PictagError(
                f"the embedding was trained on {in_dim}-d features but {backbone.spec} gives {backbone.embed_dim}"
            )
        super().__init__(backbone.spec, backbone.module, backbone.preprocess, dim, backbone.weights_id)
        # The backbone shares `module`; registering it too would list every parameter twice.
        self.__dict__["backbone"] = backbone
        for name in ("tokenizer", "processor"):  # the run format saves a transformers backbone's files from these
            if hasattr(backbone, name):
                setattr(self, name, getattr(backbone, name))
        self.in_dim, self.batchnorm = backbone.embed_dim, batchnorm
        layers: list[torch.nn.Module] = [torch.nn.Linear(backbone.embed_dim, dim)]
        if batchnorm:
            layers.append(torch.nn.BatchNorm1d(dim))
        self.neck = torch.nn.Sequential(*layers)
        self.eval()

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone.forward_image(pixels))

    def embedding_config(self) -> dict:
        """What rebuilds this encoder around its backbone: `EmbeddingEncoder(backbone, **config)`."""
        return {"dim": self.embed_dim, "batchnorm": self.batchnorm, "in_dim": self.in_dim}
