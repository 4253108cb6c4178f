"""One small hyper-parameter sweep for every head fitted on cached features: a trained head's learning rate and
weight decay (the training head stage, fusion stage 1), the linear probe's C, and a kNN vote's k.

    found = sweep([{"C": c} for c in C_GRID], labels, evaluate, prefer=lambda c: abs(log(c["C"] / 10)))
    found.best        # {"C": 3.0}
    found.describe()  # "C 3 (3-fold accuracy 0.912 over 7 candidates, 0.4 s)"

`evaluate(train, test)` gets positions of one inner fold and returns a held-out score per candidate (higher is
better), so that one fold may fit the candidates in sequence, each warm-started from the last. Folds are stratified
and seeded; the score of a candidate is its mean over every held-out row. On cached features one fit costs
milliseconds to a second, so a sweep costs seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_FOLDS = 5


@dataclass
class Sweep:
    """What a sweep chose.

    Attributes:
        best: The chosen candidate (the default one when no fold could be made).
        score: Its held-out score, or None without folds.
        scores: Every candidate's held-out score, in the candidates' order (empty without folds).
        folds: Inner folds scored (0: too few images per class, the default was kept).
        seconds: What the sweep cost.
    """

    best: dict
    score: float | None = None
    scores: list[float] = field(default_factory=list)
    folds: int = 0
    seconds: float = 0.0
    metric: str = "accuracy"

    def describe(self) -> str:
        values = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in self.best.items())
        if not self.folds:
            return f"{values} (the default: too few images per class for inner folds)"
        return (
            f"{values} ({self.folds}-fold {self.metric} {self.score:.3f} over {len(self.scores)} candidates, "
            f"{self.seconds:.1f} s)"
        )

    def record(self) -> dict:
        """What a run keeps of the sweep (best/pictag.json, the resolved config)."""
        scored = {"score": self.score, "metric": self.metric} if self.folds else {}  # the default needs no score
        return {**self.best, **scored, "folds": self.folds}


def inner_folds(labels: Sequence[int], folds: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, test) positions: at most `folds`, and no more than the smallest class has images."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    k = int(min(folds, MAX_FOLDS, np.bincount(y).min() if len(y) else 0))
    if k < 2:
        return []
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def sweep(
    candidates: Sequence[dict],
    labels: Sequence[int],
    evaluate: Callable[[np.ndarray, np.ndarray], Sequence[float]],
    *,
    folds: int = 3,
    seed: int = 0,
    default: int = 0,
    prefer: Callable[[dict], float] | None = None,
    metric: str = "accuracy",
) -> Sweep:
    """The candidate with the best held-out score over inner folds of `labels`.

    Args:
        candidates: The values to try, each a dict of option values.
        labels: Class of each row (the folds are stratified by it).
        evaluate: (train positions, test positions) -> one score per candidate, higher is better.
        folds: Inner folds, at most (fewer when a class has fewer images).
        seed: Seed of the folds.
        default: The candidate kept when no fold can be made.
        prefer: Ties go to the candidate with the smallest value of this (the default's closeness, say).
        metric: What the score is, for messages.
    """
    started = time.perf_counter()
    splits = inner_folds(labels, folds, seed)
    if not splits:
        return Sweep(dict(candidates[default]), metric=metric)
    totals = np.zeros(len(candidates))
    for train, test in splits:
        totals += np.asarray(evaluate(train, test), dtype=float) * len(test)
    means = totals / sum(len(test) for _, test in splits)
    # Scores within a rounding error are ties: the preferred candidate wins them.
    best = max(range(len(candidates)), key=lambda i: (round(means[i], 9), -(prefer(candidates[i]) if prefer else i)))
    return Sweep(
        dict(candidates[best]), float(means[best]), means.tolist(), len(splits), time.perf_counter() - started, metric
    )
