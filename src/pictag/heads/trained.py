"""Heads trained by an optimiser with the backbone, and the head a `pictag fewshot-train` checkpoint stores.

Both start from class prototypes (normalised class means of the training embeddings), so training starts from the
prototype classifier, which is already good with few shots, and never from random weights that would send large,
random gradients into the unfrozen blocks. Without prototypes (a head about to load its state) they start at zero.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.heads.base import TRAINED, Head

FINETUNED = "finetuned"


def _starting_prototypes(prototypes: torch.Tensor | None, num_classes: int, dim: int) -> torch.Tensor:
    """(C, D) normalised float prototypes, or zeros of that shape for a head about to load its state."""
    prototypes = torch.zeros(num_classes, dim) if prototypes is None else prototypes.float()
    return F.normalize(prototypes, dim=-1)


class ResidualCosineHead(Head):
    """Cosine classifier: logits = s · cos(f, W₀ + ΔW), as `pictag fewshot-train` trains it.

    W₀ are the class prototypes (a buffer), ΔW a learned residual initialised at zero and s a learned temperature.

    Args:
        prototypes: (C, D) class prototypes W₀.
        scale: The starting temperature s.
        num_classes: C, when no prototypes are given.
        dim: D, when no prototypes are given.
    """

    name = FINETUNED
    kind = TRAINED

    def __init__(
        self, prototypes: torch.Tensor | None = None, scale: float = 16.0, *, num_classes: int = 0, dim: int = 0
    ):
        prototypes = _starting_prototypes(prototypes, num_classes, dim)
        super().__init__(*prototypes.shape)
        self.register_buffer("prototypes", prototypes)
        self.residual = torch.nn.Parameter(torch.zeros_like(self.prototypes))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))

    @property
    def weight(self) -> torch.Tensor:
        """(C, D) normalised class weights."""
        return F.normalize(self.prototypes + self.residual, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.normalize(features.float(), dim=-1) @ self.weight.T


class LinearHead(Head):
    """Linear classifier: logits = f·Wᵀ + b, starting from W = scale · prototypes and b = 0.

    Args:
        prototypes: (C, D) class prototypes.
        scale: Multiplier of the normalised prototypes, the starting temperature of the scores.
        num_classes: C, when no prototypes are given.
        dim: D, when no prototypes are given.
    """

    name = "linear"
    kind = TRAINED

    def __init__(
        self, prototypes: torch.Tensor | None = None, scale: float = 16.0, *, num_classes: int = 0, dim: int = 0
    ):
        prototypes = _starting_prototypes(prototypes, num_classes, dim)
        super().__init__(*prototypes.shape)
        self.weight = torch.nn.Parameter(scale * prototypes)
        self.bias = torch.nn.Parameter(torch.zeros(self.num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias)


class CosineHead(Head):
    """Cosine classifier: logits = s · cos(f, W), W learned from the normalised prototypes, s a learned temperature.

    Args:
        prototypes: (C, D) class prototypes.
        scale: The starting temperature s.
        num_classes: C, when no prototypes are given.
        dim: D, when no prototypes are given.
    """

    name = "cosine"
    kind = TRAINED

    def __init__(
        self, prototypes: torch.Tensor | None = None, scale: float = 16.0, *, num_classes: int = 0, dim: int = 0
    ):
        prototypes = _starting_prototypes(prototypes, num_classes, dim)
        super().__init__(*prototypes.shape)
        self.weight = torch.nn.Parameter(prototypes)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.normalize(features.float(), dim=-1) @ F.normalize(self.weight, dim=-1).T


class MLPHead(LinearHead):
    """The linear prototype classifier plus a residual MLP: logits = f·Wᵀ + b + MLP(f).

    The MLP's last layer starts at zero, so training starts from the prototype classifier and the hidden layer
    only adds what the linear one cannot separate.

    Args:
        prototypes: (C, D) class prototypes.
        scale: Multiplier of the normalised prototypes in the linear part.
        hidden: Width of the MLP's hidden layer (the feature length when 0).
        num_classes: C, when no prototypes are given.
        dim: D, when no prototypes are given.
    """

    name = "mlp"

    def __init__(
        self,
        prototypes: torch.Tensor | None = None,
        scale: float = 16.0,
        hidden: int = 0,
        *,
        num_classes: int = 0,
        dim: int = 0,
    ):
        super().__init__(prototypes, scale, num_classes=num_classes, dim=dim)
        self.hidden = hidden or self.dim
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(self.dim, self.hidden), torch.nn.GELU(), torch.nn.Linear(self.hidden, self.num_classes)
        )
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features) + self.mlp(features)

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden}


def read_trained_head(path: str | os.PathLike) -> dict | None:
    """The "pictag" entry of a fine-tuned checkpoint (model, classes, head_weight, head_scale, ...), or None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or not ours: loading the model reports what is wrong with it
        return None
    return state.get("pictag") if isinstance(state, dict) else None


def finetuned_head(trained: dict, classes: tuple[str, ...] | list[str]) -> ResidualCosineHead:
    """The checkpoint's trained head (see `read_trained_head`) restricted to `classes`, in their order.

    Raises:
        PictagError: a class the checkpoint's head was not trained on.
    """
    missing = [c for c in classes if c not in trained["classes"]]
    if missing:
        raise PictagError(
            f"the fine-tuned head knows {', '.join(trained['classes'])} but not {', '.join(missing)}: "
            "use another --method (the fine-tuned backbone still applies)"
        )
    rows = [trained["classes"].index(c) for c in classes]
    # The stored weight is the trained W₀ + ΔW, normalised: as prototypes with no residual it gives the same logits.
    return ResidualCosineHead(trained["head_weight"][rows], float(trained["head_scale"]))
