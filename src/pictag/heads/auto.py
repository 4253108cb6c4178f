"""`auto`: fit every method and keep the one with the best held-out accuracy on the support set."""

from __future__ import annotations

import torch

from pictag.heads.base import FEW_SHOT, Head, create_head

# Simplest first: on equal support accuracy, the method with fewer choices made on the same few examples wins.
CANDIDATES = ("prototype", "tip-adapter", "linear-probe")


class AutoHead(Head):
    """Picks among prototype, Tip-Adapter and linear probe by leave-one-out (cross-validated) support accuracy.

    When nothing can be held out (a class with one example), it falls back to Tip-Adapter if text prototypes are
    given (zero-shot knowledge helps most at one shot) and to the linear probe otherwise: its intercept absorbs
    the direction that all embeddings of an image-only backbone share, which cosine prototypes cannot.

    Args:
        chosen: The config of the chosen head, to rebuild a fitted `auto` (see `load_head`).

    Attributes:
        chosen: The fitted head that makes the predictions; the only one the module holds.
        candidates: Every fitted candidate, by name.
    """

    name = "auto"
    kind = FEW_SHOT

    def __init__(self, chosen: dict | None = None):
        super().__init__()
        self.candidates: dict[str, Head] = {}
        self.register_module("chosen", None if chosen is None else create_head(**chosen))
        if self.chosen is not None:
            self.num_classes, self.dim = self.chosen.num_classes, self.chosen.dim

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        self.choose({name: create_head(name).fit(features, labels, text_prototypes) for name in CANDIDATES})

    @classmethod
    def from_fitted(cls, candidates: dict[str, Head]) -> AutoHead:
        """The choice among candidates already fitted on the same support set (evaluation fits each once)."""
        head = cls()
        head.choose({name: candidates[name] for name in CANDIDATES})
        return head

    def choose(self, candidates: dict[str, Head]) -> None:
        self.candidates = candidates
        measured = [h for h in candidates.values() if h.support_accuracy is not None]
        if measured:
            self.chosen = max(measured, key=lambda h: h.support_accuracy)
        else:
            with_text = candidates["tip-adapter"].text_prototypes is not None
            self.chosen = candidates["tip-adapter" if with_text else "linear-probe"]
        self.num_classes, self.dim = self.chosen.num_classes, self.chosen.dim
        self.support_accuracy = self.chosen.support_accuracy

    @property
    def chosen_name(self) -> str:
        return self.chosen.name

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.chosen(features)

    def config(self) -> dict:
        return {"name": self.name, "chosen": None if self.chosen is None else self.chosen.config()}
