"""curves.png: whole epochs, the task's own validation metric on an axis that does not magnify a small dip, and the
phase boundaries marked; drawn from metrics.csv-like rows."""

from __future__ import annotations

from pictag.eval.plots import plot_training_curves, training_curves_figure


def _rows(metric: str, scores: list[float]) -> list[dict]:
    return [
        {"epoch": i + 1, "train_loss": 1.0 / (i + 1), "val_loss": 0.9 / (i + 1), metric: score}
        for i, score in enumerate(scores)
    ]


def test_a_small_dip_stays_small_and_epochs_are_whole():
    fig = training_curves_figure(_rows("val_top1", [0.970, 0.972, 0.966, 0.975, 0.976, 0.977, 0.978]))
    loss, top1 = fig.axes
    low, high = top1.get_ylim()
    assert high >= 100 and low <= 90, "the 0.6-point dip of epoch 3 spans under a twentieth of the axis"
    assert top1.get_ylabel() == "val top1 (%)"
    assert all(tick == int(tick) for tick in top1.get_xticks()), "no epoch 2.5"
    assert [line.get_label() for line in loss.get_lines()] == ["train loss", "val loss"]


def test_arcface_curves_show_recall_and_the_margin_boundary(tmp_path):
    marks = [(2.5, "backbone unfrozen, margin on")]
    fig = training_curves_figure(_rows("val_recall@1", [0.4, 0.45, 0.6, 0.7]), "val_recall@1", marks)
    loss, recall = fig.axes
    assert recall.get_ylabel() == "val recall@1 (%)" and recall.get_ylim()[0] == 38.0
    for ax in fig.axes:
        assert any(list(line.get_xdata()) == [2.5, 2.5] for line in ax.get_lines()), "the boundary on both panels"
    assert [text.get_text() for text in loss.texts] == ["backbone unfrozen, margin on"]
    assert plot_training_curves(_rows("val_recall@1", [0.4]), tmp_path / "c.png", "val_recall@1").stat().st_size


def test_without_validation_there_is_only_the_loss():
    rows = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]
    (loss,) = training_curves_figure(rows).axes
    assert [line.get_label() for line in loss.get_lines()] == ["train loss"]
