"""The model options every task config shares, and the one place that turns them into an encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

from pictag.models.base import Encoder
from pictag.models.registry import create_model, default_model


@dataclass(kw_only=True)
class ModelOptions:
    """`--model`, `--checkpoint`, `--random-weights`, `--device`, `--precision` of a task config."""

    model: str = field(default_factory=default_model)
    checkpoint: str | None = None
    random_weights: bool = False
    device: str | None = None
    precision: str | None = None

    def create_encoder(self) -> Encoder:
        """The encoder these options name; see `create_model`."""
        return create_model(
            self.model,
            checkpoint=self.checkpoint,
            random_weights=self.random_weights,
            device=self.device,
            precision=self.precision,
        )
