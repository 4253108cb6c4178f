"""`knn`: a kNN vote against a labelled gallery of embeddings (`pictag classify --gallery STORE`).

An image takes the labels of its K most similar gallery embeddings; each neighbour's vote counts 1 (uniform) or the
inverse of its L2 distance (distance, as scikit-learn's KNeighborsClassifier weights). The logits are the logs of
the vote shares, so that the one softmax of `scores_from_logits` turns them back into the shares (a class with no
vote gets 1e-6), and calibration's temperature and per-class thresholds apply to them as to any head's.

New classes need no training: adding their images to the gallery is enough. The search is exact, in blocks of
gallery rows, so it never holds a batch × gallery similarity matrix. Without a k, `fit` picks it from `K_GRID` by
the held-out accuracy of the gallery's own inner folds (`pictag.heads.sweep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from pictag.errors import PictagError
from pictag.heads.base import GALLERY, Head, check_support

BLOCK_ROWS = 65536
NO_VOTE = 1e-6
K_GRID = (1, 3, 5, 10, 20, 50)
DEFAULT_K = 10
# The k sweep searches a sample of a larger gallery: its folds then cost seconds, not a gallery x gallery search.
SWEEP_ROWS = 20000


class KnnHead(Head):
    """Votes of the `k` nearest gallery embeddings, fitted on (gallery features, gallery labels).

    Args:
        k: Neighbours that vote (None: chosen by `fit`, see `K_GRID`).
        weights: uniform (one vote each) or distance (1 / L2 distance).
        num_classes: C, for a head about to load its state.
        dim: D, likewise.
        size: Gallery rows, likewise.
    """

    name = "knn"
    kind = GALLERY

    def __init__(
        self,
        k: int | None = None,
        weights: Literal["uniform", "distance"] = "uniform",
        num_classes: int = 0,
        dim: int = 0,
        size: int = 0,
    ):
        super().__init__(num_classes, dim)
        if k is not None and k < 1:
            raise PictagError(f"--knn-k must be at least 1, not {k}")
        if weights not in ("uniform", "distance"):
            raise PictagError(f"kNN weights must be uniform or distance, not {weights!r}")
        self.k, self.weights = k, weights
        self.register_buffer("gallery", torch.zeros(size, dim))
        self.register_buffer("gallery_labels", torch.zeros(size, dtype=torch.long))

    def fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None = None) -> Head:
        """Keep the gallery; every class 0..C-1 must have an image in it.

        Raises:
            PictagError: an empty gallery, a class without an image, or K above the gallery's size.
        """
        features, labels = features.float(), labels.long().to(features.device)
        self.num_classes, self.dim = check_support(features, labels, None), features.shape[1]
        if self.k is None:
            self.sweep = self._choose_k(features, labels)
            self.k = self.sweep.best["k"]
        if self.k > len(features):
            raise PictagError(f"--knn-k {self.k} is more than the gallery's {len(features)} image(s): lower it")
        self.gallery, self.gallery_labels = features, labels
        self.support_accuracy = None  # each gallery image would find itself: `pictag evaluate` measures leave-one-out
        return self

    def _choose_k(self, features: torch.Tensor, labels: torch.Tensor):
        """The k of `K_GRID` whose vote is most accurate on inner folds of the gallery (one search per fold)."""
        from pictag.heads.sweep import sweep

        if len(labels) > SWEEP_ROWS:
            sample = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:SWEEP_ROWS]
            features, labels = features[sample.to(features.device)], labels[sample.to(labels.device)]
        smallest_fold = len(labels) - len(labels) // 2  # with 2 folds, the least a fold's gallery holds
        candidates = [{"k": k} for k in K_GRID if k <= smallest_fold] or [{"k": 1}]

        def evaluate(train, test) -> list[float]:
            train, test = torch.as_tensor(train), torch.as_tensor(test)
            head = KnnHead(candidates[-1]["k"], self.weights)
            head.num_classes, head.gallery, head.gallery_labels = self.num_classes, features[train], labels[train]
            sims, rows = head.neighbours(features[test])
            return [
                float((head.vote(sims[:, : c["k"]], rows[:, : c["k"]]).argmax(1) == labels[test]).float().mean())
                for c in candidates
            ]

        default = next((i for i, c in enumerate(candidates) if c["k"] == DEFAULT_K), len(candidates) - 1)
        return sweep(candidates, labels.tolist(), evaluate, default=default, prefer=lambda c: abs(c["k"] - DEFAULT_K))

    def neighbours(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarities, gallery rows) of the k nearest gallery embeddings of each row, best first."""
        features = features.to(self.gallery.device, torch.float32)
        best_sims = features.new_empty(len(features), 0)
        best_rows = torch.empty(len(features), 0, dtype=torch.long, device=features.device)
        for start in range(0, len(self.gallery), BLOCK_ROWS):
            sims = features @ self.gallery[start : start + BLOCK_ROWS].T
            top = sims.topk(min(self.k, sims.shape[1]), dim=1)
            merged = torch.cat([best_sims, top.values], dim=1)
            rows = torch.cat([best_rows, top.indices + start], dim=1)
            best_sims, keep = merged.topk(min(self.k, merged.shape[1]), dim=1)
            best_rows = rows.gather(1, keep)
        return best_sims, best_rows

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.vote(*self.neighbours(features))

    def vote(self, sims: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Log vote shares of each row's neighbours (`neighbours`' similarities and gallery rows)."""
        if self.weights == "distance":
            # |a - b| = sqrt(2 - 2 a.b) for unit vectors; an exact duplicate gets a large but finite vote.
            votes = 1 / ((2 - 2 * sims).clamp(min=0).sqrt() + 1e-6)
        else:
            votes = torch.ones_like(sims)
        totals = sims.new_zeros(len(sims), self.num_classes).scatter_add_(1, self.gallery_labels[rows], votes)
        shares = totals / totals.sum(dim=1, keepdim=True)
        return shares.clamp(min=NO_VOTE).log()

    def config(self) -> dict:
        return {**super().config(), "k": self.k, "weights": self.weights, "size": len(self.gallery)}

    @classmethod
    def from_labels(
        cls, features: torch.Tensor, labels: Sequence[str], k: int | None, weights: str
    ) -> tuple[KnnHead, list[str]]:
        """The head fitted on a gallery's (N, D) `features` and their N labels, and its classes (sorted).

        Raises:
            PictagError: K above the gallery's size.
        """
        classes = sorted(set(labels))
        index = {name: i for i, name in enumerate(classes)}
        codes = torch.as_tensor([index[label] for label in labels], device=features.device)
        return cls(k, weights).fit(features, codes), classes
