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
