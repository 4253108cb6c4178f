"""Linear probe: multinomial logistic regression on support embeddings, regularisation chosen by cross-validation.

The L2-regularised solution lies in the span of the training embeddings (representer theorem), so embeddings are
first expressed in an orthonormal basis of the support set's span: at most N coordinates instead of D. The fit is
the same, and much faster when D (512-1280) exceeds N (a few dozen to a few hundred). The problems are tiny, so
BLAS runs on one thread: on a busy machine more threads cost far more than they save.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from pictag.heads.base import Head, register_head

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
DEFAULT_C = 10.0  # used when some class has a single example and nothing can be held out
MAX_FOLDS = 5


@register_head("linear-probe")
class LinearProbeHead(Head):
    """Logistic regression (scikit-learn, L-BFGS) with C picked by stratified k-fold cross-validation.

    k is the smallest class count, at most 5; `support_accuracy` is the cross-validated accuracy of the chosen C
    (ties go to the C closest to the default). Text prototypes are not used: this is the CLIP paper's linear probe.
    """

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        from threadpoolctl import threadpool_limits

        _, s, vh = torch.linalg.svd(features.double(), full_matrices=False)
        self.basis = vh[s > s[0] * 1e-6].float()
        z, y = (features @ self.basis.T).numpy(), labels.numpy()
        folds = int(min(MAX_FOLDS, np.bincount(y).min()))
        self.C = DEFAULT_C
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at large C change no prediction we make
            if folds >= 2:
                scores = _cross_val_accuracy(z, y, folds)
                self.C = max(C_GRID, key=lambda c: (scores[c], -abs(np.log(c / DEFAULT_C))))
                self.support_accuracy = scores[self.C]
            self.model = _logistic(self.C).fit(z, y)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.model.decision_function((features @ self.basis.T).numpy())
        if scores.ndim == 1:  # scikit-learn returns one column for two classes
            scores = np.stack([-scores / 2, scores / 2], axis=1)
        return torch.from_numpy(scores).float()


def _logistic(c: float, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=300, warm_start=warm_start)


def _cross_val_accuracy(z: np.ndarray, y: np.ndarray, folds: int) -> dict[float, float]:
    """Held-out accuracy of every C; each fold walks the grid upwards, warm-started from the previous C."""
    from sklearn.model_selection import StratifiedKFold

    correct = dict.fromkeys(C_GRID, 0)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(z, y):
        model = _logistic(C_GRID[0], warm_start=True)
        for c in C_GRID:
            model.set_params(C=c).fit(z[train], y[train])
            correct[c] += int((model.predict(z[test]) == y[test]).sum())
    return {c: n / len(y) for c, n in correct.items()}
