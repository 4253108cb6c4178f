"""Linear probe: multinomial logistic regression on support embeddings, regularisation chosen by cross-validation.

The L2-regularised solution lies in the span of the training embeddings (representer theorem), so embeddings are
first expressed in an orthonormal basis of the support set's span: at most N coordinates instead of D. The fit is
the same, and much faster when D (512-1280) exceeds N (a few dozen to a few hundred). The problems are tiny, so
BLAS runs on one thread: on a busy machine more threads cost far more than they save. scikit-learn fits on the
CPU; the fitted probe is then plain tensors, logits = f·Wᵀ + b with the basis folded into W, on the features' device.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import torch

from pictag.heads.base import FEW_SHOT, Head

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
DEFAULT_C = 10.0  # used when some class has a single example and nothing can be held out
MAX_FOLDS = 5


def span_basis(features: torch.Tensor) -> torch.Tensor:
    """(R, D) orthonormal basis of the span of (N, D) features, R <= N."""
    _, s, vh = torch.linalg.svd(features.double(), full_matrices=False)
    return vh[s > s[0] * 1e-6].float()


class LinearProbeHead(Head):
    """Logistic regression (scikit-learn, L-BFGS) with C picked by stratified k-fold cross-validation.

    C is swept by `pictag.heads.sweep` over k stratified folds, k the smallest class count, at most 5;
    `support_accuracy` is the cross-validated accuracy of the chosen C (ties go to the C closest to the default). Text prototypes are not used: this is the CLIP paper's linear probe.

    Attributes:
        C: The inverse regularisation strength chosen by `fit`.
    """

    name = "linear-probe"
    kind = FEW_SHOT

    def __init__(self, num_classes: int = 0, dim: int = 0):
        super().__init__(num_classes, dim)
        self.register_buffer("weight", torch.zeros(num_classes, dim))
        self.register_buffer("bias", torch.zeros(num_classes))

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        from threadpoolctl import threadpool_limits

        from pictag.heads.sweep import sweep

        basis = span_basis(features)
        z, y = (features @ basis.T).cpu().numpy(), labels.cpu().numpy()
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at large C change no prediction we make
            found = sweep(
                [{"C": c} for c in C_GRID],
                y,
                partial(_held_out_accuracy, z, y),
                folds=MAX_FOLDS,
                default=C_GRID.index(DEFAULT_C),
                prefer=lambda c: abs(np.log(c["C"] / DEFAULT_C)),
            )
            self.C, self.sweep = found.best["C"], found
            if found.folds:
                self.support_accuracy = found.score
            model = _logistic(self.C).fit(z, y)
        coef, intercept = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
        if len(coef) == 1:  # two classes: scikit-learn keeps one row; ±half of it gives the softmax of predict_proba
            coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
        self.weight = (coef.double() @ basis.cpu().double()).float().to(features.device)
        self.bias = intercept.float().to(features.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(features, self.weight, self.bias)


def _logistic(c: float, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=300, warm_start=warm_start)


def _held_out_accuracy(z: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> list[float]:
    """Held-out accuracy of every C on one fold, walking the grid upwards, each fit warm-started from the last."""
    model = _logistic(C_GRID[0], warm_start=True)
    scores = []
    for c in C_GRID:
        model.set_params(C=c).fit(z[train], y[train])
        scores.append(float((model.predict(z[test]) == y[test]).mean()))
    return scores
