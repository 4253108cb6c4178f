"""PNG plots for reports, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def plot_coverage_accuracy(
    coverage: np.ndarray,
    accuracy: np.ndarray,
    out: str | os.PathLike,
    operating_point: tuple[float, float] | None = None,
    target: float | None = None,
    title: str = "coverage vs accuracy",
) -> Path:
    """Accuracy of the predictions kept against the fraction kept, as the confidence threshold rises.

    Args:
        coverage: Fraction of samples predicted (not "unknown"), ascending.
        accuracy: Accuracy among those samples.
        out: The PNG to write.
        operating_point: (coverage, accuracy) reached by the per-class thresholds, marked on the curve.
        target: The precision asked for, drawn as a horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.plot(coverage, accuracy, label="one global threshold")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target precision {target:g}")
    if operating_point is not None:
        ax.scatter(*operating_point, color="C3", zorder=3, label="per-class thresholds")
    ax.set_xlabel("coverage (fraction not 'unknown')")
    ax.set_ylabel("accuracy of covered")
    ax.set_xlim(0, 1)
    ax.set_ylim(max(0.0, float(np.min(accuracy)) - 0.05) if len(accuracy) else 0, 1.01)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower left")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_training_curves(rows: list[dict], out: str | os.PathLike) -> Path:
    """Train and validation loss, and validation top-1 when there is one, per epoch (from metrics.csv rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    epochs = [row["epoch"] for row in rows]
    ax.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="train loss")
    if any(row.get("val_loss") is not None for row in rows):
        ax.plot(epochs, [row.get("val_loss") for row in rows], marker="o", label="val loss")
    ax.set(xlabel="epoch", ylabel="loss")
    ax.grid(alpha=0.3)
    if any(row.get("val_top1") is not None for row in rows):
        other = ax.twinx()
        other.plot(
            epochs, [100 * (row.get("val_top1") or 0) for row in rows], marker="s", color="C2", label="val top-1"
        )
        other.set_ylabel("val top-1 (%)")
    fig.legend(loc="upper center", ncol=3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_confusion(confusion, classes: list[str], out: str | os.PathLike, title: str = "confusion") -> Path:
    """A confusion matrix (rows: true class, columns: predicted), normalised per row, counts written in cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.35 * len(classes) + 2), 16.0)
    fig, ax = plt.subplots(figsize=(side, side), dpi=120)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=7)
    ax.set_yticks(ticks, classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if len(classes) <= 30:
        for i in ticks:
            for j in ticks:
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        int(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
