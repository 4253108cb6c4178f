"""Classification metrics over logits and labels: top-k accuracy, the confusion matrix, per-class precision/recall."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from pictag.storage.files import atomic_file


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest logits (k is capped at the number of classes)."""
    if not len(labels):
        return 0.0
    best = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (best == labels[:, None]).any(dim=-1).float().mean().item()


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def write_per_class(confusion: torch.Tensor, classes: Sequence[str], out: str | os.PathLike) -> Path:
    """Write class, images, precision, recall, f1 per class (from a confusion matrix) to a CSV file."""
    confusion = confusion.double()
    hits = confusion.diag()
    precision = hits / confusion.sum(dim=0).clamp(min=1)
    recall = hits / confusion.sum(dim=1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    out = Path(out)
    with atomic_file(out, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "images", "precision", "recall", "f1"])
        for i, name in enumerate(classes):
            count = int(confusion[i].sum())
            writer.writerow([name, count, f"{precision[i]:.4f}", f"{recall[i]:.4f}", f"{f1[i]:.4f}"])
    return out
