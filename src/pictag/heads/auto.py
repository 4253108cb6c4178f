"""`auto`: fit every method and keep the one with the best held-out accuracy on the support set."""

from __future__ import annotations

import torch

from pictag.heads.base import HEADS, Head, register_head

# Simplest first: on equal support accuracy, the method with fewer choices made on the same few examples wins.
CANDIDATES = ("prototype", "tip-adapter", "linear-probe")


@register_head("auto")
class AutoHead(Head):
    """Picks among prototype, Tip-Adapter and linear probe by leave-one-out (cross-validated) support accuracy.

    When nothing can be held out (a class with one example), it falls back to Tip-Adapter if text prototypes are
    given (zero-shot knowledge helps most at one shot) and to the linear probe otherwise: its intercept absorbs
    the direction that all embeddings of an image-only backbone share, which cosine prototypes cannot.

    Attributes:
        chosen: The fitted head that makes the predictions.
        candidates: Every fitted candidate, by name.
    """

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        self.choose({name: HEADS[name]().fit(features, labels, text_prototypes) for name in CANDIDATES})

    @classmethod
    def from_fitted(cls, candidates: dict[str, Head]) -> AutoHead:
        """The choice among candidates already fitted on the same support set (evaluation fits each once)."""
        head = cls()
        head.num_classes = next(iter(candidates.values())).num_classes
        head.choose({name: candidates[name] for name in CANDIDATES})
        return head

    def choose(self, candidates: dict[str, Head]) -> None:
        self.candidates = candidates
        measured = [h for h in candidates.values() if h.support_accuracy is not None]
        if measured:
            self.chosen = max(measured, key=lambda h: h.support_accuracy)
        else:
            with_text = getattr(candidates["tip-adapter"], "text_prototypes", None) is not None
            self.chosen = candidates["tip-adapter" if with_text else "linear-probe"]
        self.support_accuracy = self.chosen.support_accuracy

    @property
    def chosen_name(self) -> str:
        return self.chosen.name

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.chosen.logits(features)
