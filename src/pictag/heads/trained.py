"""The classifier that `pictag fewshot-train` stored in its checkpoint, reused for tasks over the same classes."""

from __future__ import annotations

import os

import torch

from pictag.errors import PictagError
from pictag.heads.base import Head, accuracy

FINETUNED = "finetuned"


def read_trained_head(path: str | os.PathLike) -> dict | None:
    """The "pictag" entry of a fine-tuned checkpoint (model, classes, head_weight, head_scale, ...), or None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or not ours: loading the model reports what is wrong with it
        return None
    return state.get("pictag") if isinstance(state, dict) else None


class TrainedHead(Head):
    """A fixed cosine classifier: the fine-tuned head's rows for a task's classes, in the task's order.

    `fit` trains nothing; it measures the classifier on the support images, which is the task's support accuracy.
    """

    name = FINETUNED

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.weight, self.scale = weight.float(), scale

    @classmethod
    def for_classes(cls, trained: dict, classes: tuple[str, ...] | list[str]) -> TrainedHead:
        """The head restricted to `classes`.

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
        return cls(trained["head_weight"][rows], float(trained["head_scale"]))

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        self.support_accuracy = accuracy(self.logits(features), labels)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * features @ self.weight.T
