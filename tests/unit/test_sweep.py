"""One sweep for every head on cached features: the mechanism, the linear probe's C and the kNN vote's k."""

from __future__ import annotations

import numpy as np
import torch

from pictag.heads import create_head
from pictag.heads.knn import K_GRID
from pictag.heads.sweep import inner_folds, sweep


def test_sweep_picks_the_best_held_out_score_and_breaks_ties_by_preference():
    labels = [0, 1] * 6
    calls = []

    def evaluate(train, test):
        calls.append((len(train), len(test)))
        return [0.5, 0.9, 0.9, 0.1]

    candidates = [{"c": c} for c in (1, 2, 3, 4)]
    found = sweep(candidates, labels, evaluate, folds=3, prefer=lambda c: abs(c["c"] - 3))
    assert found.best == {"c": 3} and found.score == 0.9 and found.folds == 3 and calls == [(8, 4)] * 3
    assert "c 3 (3-fold accuracy 0.900 over 4 candidates" in found.describe()
    assert sweep(candidates, labels, evaluate).best == {"c": 2}, "without a preference, the first of the tied"


def test_too_few_images_per_class_keep_the_default():
    found = sweep([{"c": 1}, {"c": 2}], [0, 1, 1], lambda tr, te: [1.0, 0.0], default=1)
    assert found.best == {"c": 2} and found.folds == 0 and "the default" in found.describe()
    assert inner_folds([0, 0, 1, 1, 1], folds=3) != [] and len(inner_folds([0, 0, 1, 1, 1], folds=3)) == 2


def _clusters(n_per_class: int, classes: int, spread: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, 16, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), 16, generator=generator)
    return torch.nn.functional.normalize(features, dim=-1), labels


def test_knn_k_is_the_grids_best_on_inner_folds():
    features, labels = _clusters(12, 4, 0.6)
    head = create_head("knn").fit(features, labels)
    assert head.k in K_GRID and head.sweep.best == {"k": head.k}
    # The same folds by hand: each k's held-out accuracy, the chosen one the best (ties to the nearest to 10).
    scores = {}
    for k in [k for k in K_GRID if k <= 24]:
        right = 0
        for train, test in inner_folds(labels.tolist(), 3, 0):
            fold = create_head("knn", k=k).fit(features[train], labels[train])
            right += int((fold(features[test]).argmax(1) == labels[test]).sum())
        scores[k] = right / len(labels)
    assert scores[head.k] == max(scores.values())
    assert np.isclose(head.sweep.score, scores[head.k])


def test_linear_probe_c_is_swept_and_recorded():
    features, labels = _clusters(10, 3, 0.8)
    head = create_head("linear-probe").fit(features, labels)
    assert head.sweep.folds == 5 and head.sweep.best == {"C": head.C}
    assert head.support_accuracy == head.sweep.score
