"""Calibrated zero-shot decisions: a temperature for the logits and per-class score thresholds below which a
prediction becomes "unknown", fitted on a small labelled set and saved as YAML for `pictag classify --calibration`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from pictag.errors import PictagError
from pictag.heads.base import scores_from_logits
from pictag.storage.files import write_file

FITTED, NO_DATA, UNREACHABLE = "fitted", "no_data", "unreachable"


def templates_digest(templates: Sequence[str]) -> str:
    """A short hash of a template list: calibration is only valid for the prototypes it was fitted on."""
    return hashlib.sha1(json.dumps(list(templates)).encode()).hexdigest()[:12]


@dataclass
class Calibration:
    """A fitted temperature and per-class thresholds, tied to the model, labels and templates they were fitted for.

    Attributes:
        temperature: Logits are divided by it before the softmax (or sigmoid).
        thresholds: Per label, the lowest calibrated top-1 score whose predictions reached `target_precision` on the
            labelled set; `inf` for a class that never reached it (its predictions always become "unknown").
        classes: Per label, how its threshold was found: status (fitted, no_data: the pooled threshold was used,
            unreachable), predictions seen, and the precision reached.
        head: The options the head's scores depend on besides labels and templates (`head_options`), e.g. a kNN
            vote's k, weights and gallery size; empty in files written before they were recorded.
    """

    model: str
    weights_id: str
    templates: str
    templates_digest: str
    labels: list[str]
    temperature: float
    target_precision: float
    global_threshold: float
    thresholds: dict[str, float]
    classes: dict[str, dict] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        if not os.path.isfile(path):
            raise PictagError(f"calibration file {path} does not exist: make one with `pictag calibrate`")
        try:
            values = yaml.safe_load(Path(path).read_text())
            return cls(**values)
        except (yaml.YAMLError, TypeError) as exc:
            raise PictagError(
                f"{path} is not a pictag calibration file ({exc}): make one with `pictag calibrate`"
            ) from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        write_file(path, yaml.safe_dump(asdict(self), sort_keys=False).encode())
        return path

    def check(self, spec: str, weights_id: str, labels: Sequence[str], templates: Sequence[str], head: dict) -> None:
        """Refuse to apply this calibration to another model, label set, template set or head options.

        Args:
            head: The head's `config()`.
        """
        if (spec, weights_id) != (self.model, self.weights_id):
            raise PictagError(
                f"the calibration was fitted for {self.model} (weights {self.weights_id}), not {spec} "
                f"(weights {weights_id}): run `pictag calibrate` for this model"
            )
        if sorted(labels) != sorted(self.labels):
            missing = sorted(set(labels) ^ set(self.labels))[:5]
            raise PictagError(
                f"the calibration was fitted for other labels (differing: {', '.join(missing)}): use the same labels "
                "or run `pictag calibrate` again"
            )
        if templates_digest(templates) != self.templates_digest:
            raise PictagError(
                f"the calibration was fitted with templates {self.templates!r}, not these: pass --templates "
                f"{self.templates} or run `pictag calibrate` again"
            )
        options = head_options(head)
        if self.head and options != self.head:
            changed = sorted(k for k in self.head.keys() | options.keys() if self.head.get(k) != options.get(k))
            fitted = ", ".join(f"{k} {self.head.get(k)}" for k in changed)
            given = ", ".join(f"{k} {options.get(k)}" for k in changed)
            raise PictagError(
                f"the calibration was fitted for a {self.head.get('name')} head with {fitted}, not {given}: use the "
                "same options (e.g. --knn-k) or run `pictag calibrate` again"
            )

    def threshold_vector(self, labels: Sequence[str]) -> list[float]:
        """Thresholds in the order of `labels`."""
        return [self.thresholds[label] for label in labels]


def head_options(config: dict) -> dict:
    """What of a head's `config()` its calibration depends on: all but labels and templates (checked apart, in any
    order) and its shape."""
    return {k: v for k, v in config.items() if k not in ("labels", "templates", "num_classes", "dim")}


def fit_temperature(logits: torch.Tensor, truth: torch.Tensor, logit_bias: float | None = None) -> float:
    """The temperature minimising the negative log-likelihood of the true labels (softmax CE, or BCE for sigmoid).

    The losses of `scores_from_logits`' two rules, written on the logits: the log of an underflowed score is -inf.
    """
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")
    targets = torch.nn.functional.one_hot(truth, logits.shape[1]).float()

    def closure():
        optimizer.zero_grad()
        scaled = logits / log_t.exp()
        if logit_bias is None:
            loss = torch.nn.functional.cross_entropy(scaled, truth)
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(scaled + logit_bias, targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(1e-3, 1e3))


def nll(logits: torch.Tensor, truth: torch.Tensor, temperature: float, logit_bias: float | None) -> float:
    """Mean negative log-likelihood of the true labels."""
    p = scores_from_logits(logits, temperature, logit_bias).gather(1, truth[:, None]).clamp_min(1e-12)
    return float(-p.log().mean())


def lowest_threshold(scores: np.ndarray, correct: np.ndarray, target: float) -> tuple[float, float] | None:
    """The lowest t such that predictions scoring >= t are right at least `target` of the time, and that precision.

    None when no threshold reaches the target.
    """
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], correct[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(s) + 1)
    # A threshold accepts every tied score, so only the last position of each run of equal scores is a candidate.
    last_of_tie = np.append(s[1:] < s[:-1], True)
    ok = np.flatnonzero(last_of_tie & (precision >= target))
    if not len(ok):
        return None
    i = ok[-1]
    return float(s[i]), float(precision[i])


def fit_thresholds(
    scores: np.ndarray, predicted: np.ndarray, truth: np.ndarray, labels: Sequence[str], target: float
) -> tuple[dict[str, float], dict[str, dict], float]:
    """Per-class thresholds reaching `target` precision on the predictions of each class.

    A class with no prediction in the labelled set gets the pooled threshold (all classes together); a class
    whose predictions never reach the target gets `inf`, so its predictions always become "unknown".

    Returns:
        (thresholds by label, per-class report, pooled threshold).
    """
    correct = predicted == truth
    pooled = lowest_threshold(scores, correct, target)
    global_threshold = math.inf if pooled is None else pooled[0]
    thresholds: dict[str, float] = {}
    report: dict[str, dict] = {}
    for i, label in enumerate(labels):
        mine = predicted == i
        n = int(mine.sum())
        if n == 0:
            thresholds[label] = global_threshold
            report[label] = {"status": NO_DATA, "predictions": 0}
            continue
        found = lowest_threshold(scores[mine], correct[mine], target)
        if found is None:
            thresholds[label] = math.inf
            best = float(correct[mine].mean())
            report[label] = {"status": UNREACHABLE, "predictions": n, "precision_all": round(best, 4)}
        else:
            thresholds[label] = found[0]
            report[label] = {"status": FITTED, "predictions": n, "precision": round(found[1], 4)}
    return thresholds, report, global_threshold


def coverage_accuracy(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coverage/accuracy trade-off of one global threshold: (coverage, accuracy of the covered, threshold)."""
    order = np.argsort(-scores, kind="stable")
    hits = correct[order].astype(np.float64)
    n = np.arange(1, len(hits) + 1)
    return n / len(hits), np.cumsum(hits) / n, scores[order]
