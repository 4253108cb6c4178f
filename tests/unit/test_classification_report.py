"""The classification report's metrics against scikit-learn's, and ECE against its definition written as a loop."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, top_k_accuracy_score

from pictag.eval.classification import classification_metrics, expected_calibration_error


def test_metrics_equal_sklearn_on_seven_classes():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(7)]
    truth_codes = rng.integers(0, 6, 300)  # c6 is never in the data, only predicted
    logits = rng.normal(size=(300, 7)) + 2.0 * np.eye(7)[truth_codes]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1)
    truth = np.array(classes, dtype=object)[truth_codes]
    ranked = [list(np.array(classes)[order[:, rank]]) for rank in range(5)]
    predicted = np.array(ranked[0], dtype=object)
    confidence = probabilities.max(axis=1)
    data_classes = classes[:6]
    report, per_class = classification_metrics(truth, predicted, ranked, confidence, data_classes, len(classes))
    assert report["top1"] == pytest.approx(np.mean(predicted == truth))
    assert report["top5"] == pytest.approx(top_k_accuracy_score(truth_codes, probabilities, k=5, labels=range(7)))
    assert report["macro_f1"] == pytest.approx(f1_score(truth, predicted, labels=data_classes, average="macro"))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert (report["images"], report["classes"], report["model_classes"]) == (300, 6, 7)
    assert per_class["class"].tolist() == data_classes and per_class["support"].sum() == 300
    # With fewer than 5 labels per image, top-5 cannot be told.
    assert classification_metrics(truth, predicted, ranked[:1], confidence, data_classes, 7)[0]["top5"] is None


def test_ece_is_the_binned_gap_between_accuracy_and_confidence():
    rng = np.random.default_rng(1)
    confidence = np.concatenate([rng.uniform(0, 1, 500), [0.0, 1.0, 1 / 15]])
    correct = rng.uniform(0, 1, len(confidence)) < confidence**2
    expected = 0.0
    for low, high in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:], strict=True):
        inside = (confidence > low) & (confidence <= high) | ((low == 0) & (confidence == 0))
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)
    assert expected_calibration_error(np.ones(4), np.ones(4, dtype=bool)) == 0.0
