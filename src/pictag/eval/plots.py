"""PNG plots for reports, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pictag.storage.files import atomic_path

THUMBNAIL = 160


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
    save_figure(fig, out)
    return out


def plot_training_curves(
    rows: list[dict],
    out: str | os.PathLike,
    metric: str = "val_top1",
    marks: Sequence[tuple[float, str]] = (),
) -> Path:
    """Train and validation loss above, the validation metric that picks best/ below, per epoch (metrics.csv rows);
    see `training_curves_figure`."""
    fig = training_curves_figure(rows, metric, marks)
    out = Path(out)
    save_figure(fig, out)
    return out


def training_curves_figure(rows: list[dict], metric: str = "val_top1", marks: Sequence[tuple[float, str]] = ()):
    """The figure of `plot_training_curves`.

    Epochs are whole numbers on the x axis. The metric's axis ends at 100 % and spans at least 10 points, so that a
    0.6-point dip reads as one, not as a cliff (an axis fitted to the data makes the smallest wobble fill it).

    Args:
        rows: metrics.csv rows: "epoch", "train_loss", and "val_loss" and `metric` where there is validation.
        metric: The validation metric to plot, a fraction (val_top1, val_recall@1, ...).
        marks: (x, label) of boundaries between phases, e.g. (2.5, "backbone unfrozen") after 2 frozen epochs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in rows]
    scores = [row.get(metric) for row in rows]
    validated = metric != "val_loss" and any(v is not None for v in scores)
    fig, axes = plt.subplots(2 if validated else 1, 1, figsize=(6, 6 if validated else 3.5), dpi=120, sharex=True)
    axes = list(np.atleast_1d(axes))
    loss = axes[0]
    loss.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="train loss")
    if any(row.get("val_loss") is not None for row in rows):
        loss.plot(epochs, [row.get("val_loss") for row in rows], marker="o", label="val loss")
    loss.set_ylabel("loss")
    if validated:
        percent = [None if v is None else 100 * v for v in scores]
        axes[1].plot(epochs, percent, marker="s", color="C2", label=metric.replace("_", " "))
        low = min(v for v in percent if v is not None)
        axes[1].set_ylim(max(0.0, min(low - 2, 90.0)), 100.5)
        axes[1].set_ylabel(f"{metric.replace('_', ' ')} (%)")
    for ax in axes:
        for x, _ in marks:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    for x, label in marks:  # named once, at the top
        loss.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points",
                      va="top", fontsize=7, color="grey")  # fmt: skip
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch")
    fig.tight_layout()
    return fig


def plot_confusion(confusion, classes: list[str], out: str | os.PathLike, title: str = "confusion") -> Path:
    """A confusion matrix (rows: true class, columns: predicted), normalised per row, counts written in cells; the
    title ends with the accuracy (the diagonal's share of all images) and the number of images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=float)
    total = counts.sum()
    title = f"{title}\naccuracy {np.trace(counts) / max(total, 1):.4f} of {int(total):,} images (rows normalised)"
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.35 * len(classes) + 2), 16.0)
    fig, ax = plt.subplots(figsize=(side, side), dpi=120)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=7)
    ax.set_yticks(ticks, classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=9)
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
    save_figure(fig, out)
    return out


def plot_recall_at_k(recall: dict[int, float], out: str | os.PathLike, title: str = "Recall@K") -> Path:
    """Recall@K against K, one point per K measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(recall)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(ks, [recall[k] for k in ks], marker="o")
    for k in ks:
        ax.annotate(f"{recall[k]:.3f}", (k, recall[k]), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1.05), title=title)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
    out = Path(out)
    fig.tight_layout()
    save_figure(fig, out)
    return out


def plot_retrievals(rows: list, images: dict, out: str | os.PathLike) -> Path:
    """A grid: each row a query, then its results best first, framed green when of the query's label, else red.

    Args:
        rows: (query, results) pairs; each image is (side, key, label), `images[side, key]` its picture (a blank
            tile when missing).
        images: PIL images by (side, key).
        out: The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + max((len(results) for _, results in rows), default=0)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.8 * len(rows)), dpi=100, squeeze=False)
    for line, (query, results) in zip(axes, rows, strict=True):
        for ax in line:
            ax.axis("off")
        for n, (ax, (side, key, label)) in enumerate(zip(line, [query, *results], strict=False)):
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            picture = images.get((side, key))
            ax.imshow(picture if picture is not None else np.ones((8, 8, 3)))
            colour = "black" if n == 0 else ("tab:green" if label == query[2] else "tab:red")
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(1 if n == 0 else 4)
            ax.set_title(("query: " if n == 0 else "") + str(label)[:18], fontsize=7, color=colour)
    out = Path(out)
    fig.tight_layout()
    save_figure(fig, out)
    return out


def plot_reliability(
    count: np.ndarray, accuracy: np.ndarray, confidence: np.ndarray, out: str | os.PathLike, ece: float | None = None
) -> Path:
    """Accuracy against mean top-1 confidence per equal-width confidence bin (empty bins are NaN), the diagonal
    being perfect calibration; the bars below show how many images fall in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = len(count)
    filled = count > 0
    accuracy, mean_confidence = accuracy[filled], confidence[filled]
    fig, (ax, below) = plt.subplots(2, 1, figsize=(5, 5.5), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.plot(mean_confidence, accuracy, marker="o", label="this model")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("reliability" + (f": ECE {ece:.4f}" if ece is not None else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    edges = np.linspace(0, 1, bins + 1)
    below.bar(edges[:-1], count, width=1 / bins, align="edge", color="C0", alpha=0.6)
    below.set(xlabel="top-1 confidence", ylabel="images")
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out


def plot_errors(errors: list[tuple[str, str, str, float]], images: dict, out: str | os.PathLike) -> Path:
    """A grid of misclassified images, most confident first: each titled with its true label and the predicted
    label with its score.

    Args:
        errors: (key, true label, predicted label, score) of each image shown.
        images: PIL images by key (a blank tile when missing).
        out: The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(4, len(errors)))
    lines = max(1, -(-len(errors) // columns))
    fig, axes = plt.subplots(lines, columns, figsize=(2.4 * columns, 2.6 * lines), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (key, truth, predicted, score) in zip(axes.flat, errors, strict=False):
        picture = images.get(key)
        ax.imshow(picture if picture is not None else np.ones((8, 8, 3)))
        ax.set_title(f"true: {str(truth)[:22]}\npredicted: {str(predicted)[:16]} {score:.2f}", fontsize=7)
    if not errors:
        axes[0, 0].text(0.5, 0.5, "no errors", ha="center", va="center")
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out


def save_figure(fig, out: str | os.PathLike) -> None:
    """Write `fig` to `out` whole, or not at all (its format from the extension), and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=os.path.splitext(out)[1].lstrip(".").lower() or None)
    plt.close(fig)


def thumbnail(data: bytes):
    """A small RGB PIL image of encoded image bytes; None when they cannot be read."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            picture = img.convert("RGB")
    except (OSError, ValueError):
        return None
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    return picture


def thumbnails(source, keys: Iterable[str]) -> dict:
    """Thumbnails of the records of `source` (a `pictag.data.sources.Source`) with these keys, reading only them.

    An image that cannot be read is left out (a blank tile): it was unreadable when classified too, or changed since.
    """
    from pictag.data.sources import Only

    wanted = Only(frozenset(keys))
    found = {}
    for shard in source.shards():
        for record in shard.read(wanted):
            picture = thumbnail(record.data or b"")
            if picture is not None:
                found[record.key] = picture
    return found
