"""`pictag evaluate --model RUN --data DIR` and `classify --report` on a run trained here on a tiny random timm model: the
report equals scikit-learn on the same predictions, goes through classify's job (resume guard, errors), and
classes the model does not know are a one-line error before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

from conftest import TINY, subprocess_env
from pictag.cli.main import main
from pictag.eval.classification import expected_calibration_error
from pictag.testing import save_colour_objects

RUNTIME = ["--workers", "0", "--device", "cpu", "--batch-size", "8"]
REPORT_FILES = ("report.json", "per_class.csv", "confusion.png", "reliability.png", "errors.png", "config.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 colour classes × 2 objects × 2 views, and one unreadable image."""
    root = save_colour_objects(tmp_path_factory.mktemp("evaluate") / "data", objects=2, views=2)
    (root / "red" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "colours"
    fast = ["--epochs", "1", "--batch-size", "8", "--lr", "backbone=1e-3,head=1e-2", "--warmup-epochs", "0"]
    assert main(["train", str(data), "--out", str(out), *TINY, *fast]) == 0
    return out


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_evaluate_writes_the_report_sklearn_computes_from_the_predictions(data, run, capsys):
    assert main(["evaluate", "--model", str(run), "--data", str(data), *RUNTIME]) == 0
    out = run / "eval"
    assert "top-1" in capsys.readouterr().out
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    predictions = pd.read_parquet(out / "predictions.parquet")
    truth = predictions["key"].str.split("/").str[0]
    classes = sorted(truth.unique())
    assert (report["images"], report["classes"], report["model_classes"], report["unreadable"]) == (16, 4, 4, 1)
    assert report["top1"] == accuracy_score(truth, predictions["label"])
    assert report["macro_f1"] == pytest.approx(f1_score(truth, predictions["label"], average="macro"))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predictions["label"]))
    correct = (predictions["label"] == truth).to_numpy()
    assert report["ece"] == pytest.approx(expected_calibration_error(predictions["score"].to_numpy(), correct))
    # Four classes: the 5 best labels are all of them.
    assert report["top5"] == 1.0 and list(predictions.columns[-2:]) == ["label_4", "score_4"]
    per_class = pd.read_csv(out / "per_class.csv")
    precision, recall, f1, support = precision_recall_fscore_support(truth, predictions["label"], labels=classes)
    assert per_class["class"].tolist() == classes and per_class["support"].tolist() == support.tolist()
    assert per_class["recall"].to_numpy() == pytest.approx(recall, abs=5e-5)
    assert per_class["f1"].to_numpy() == pytest.approx(f1, abs=5e-5)
    assert "broken.png" in (out / "predictions.errors.csv").read_text()

    # The report folder is classify's output: a second evaluate is refused, --overwrite redoes it.
    assert "--overwrite" in _one_line_error(capsys, ["evaluate", "--model", str(run), "--data", str(data), *RUNTIME])
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--overwrite", *RUNTIME]) == 0
    assert json.loads((out / "report.json").read_text())["top1"] == report["top1"]


def test_classify_report_prints_top1_and_writes_the_same_report(data, run, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["classify", str(data), "--model", str(run), "--out", str(out), "--report", *RUNTIME]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "preds.report" / "report.json").read_text())
    rows = pd.read_csv(out)
    assert report["top1"] == (rows["label"] == rows["key"].str.split("/").str[0]).mean()
    assert f"top-1 {report['top1']:.4f}" in printed
    # --top-k 1 writes one label per image: top-5 cannot be told, and says so by its absence.
    assert report["top5"] is None and "top-5" not in printed
    for name in REPORT_FILES[1:-1]:
        assert (tmp_path / "preds.report" / name).is_file(), name


def test_zero_shot_evaluate_with_labels(data, tiny_open_clip, tmp_path):
    spec, checkpoint = tiny_open_clip
    argv = [
        "evaluate",
        "--model",
        spec,
        "--checkpoint",
        str(checkpoint),
        "--labels",
        "red,green,blue,grey,white",
        *RUNTIME,
    ]
    assert main([*argv, "--data", str(data), "--out", str(tmp_path / "zs")]) == 0
    report = json.loads((tmp_path / "zs" / "report.json").read_text())
    assert (report["images"], report["classes"], report["model_classes"]) == (16, 4, 5)


def test_unknown_classes_missing_data_and_mixed_modes_are_one_line(data, run, tmp_path, capsys):
    more = tmp_path / "more"
    shutil.copytree(data, more)
    save_colour_objects(tmp_path / "other", objects=1, views=1)
    shutil.copytree(tmp_path / "other" / "red", more / "purple")
    shutil.copytree(tmp_path / "other" / "red", more / "pink")
    out = tmp_path / "eval"
    err = _one_line_error(capsys, ["evaluate", "--model", str(run), "--data", str(more), "--out", str(out), *RUNTIME])
    assert "2 class(es) the model does not know: pink (1 images), purple (1 images)" in err
    assert not out.exists()  # refused before any work
    preds = tmp_path / "p.csv"
    argv = ["classify", str(more), "--model", str(run), "--out", str(preds), "--report", *RUNTIME]
    assert "does not know: pink" in _one_line_error(capsys, argv)
    assert not preds.exists()
    assert "zero" not in _one_line_error(capsys, ["evaluate", "--model", str(run), "--data", str(tmp_path / "nowhere")])
    assert "give one or the other" in _one_line_error(
        capsys, ["evaluate", "--model", str(run), "--data", str(data), "--query", str(data)]
    )
    assert "nothing to evaluate" in _one_line_error(capsys, ["evaluate", "--model", str(run)])
    assert "goes with --data" in _one_line_error(
        capsys, ["evaluate", "--model", str(run), "--query", str(data), "--labels", "a"]
    )


def test_a_killed_evaluate_resumes_and_reports_as_an_uninterrupted_one(data, run, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    argv = ["evaluate", "--model", str(run), "--data", str(data), "--unit-size", "4", *RUNTIME]
    assert main([*argv, "--out", str(whole)]) == 0
    command = [sys.executable, "-m", "pictag", *argv, "--out", str(killed)]
    proc = subprocess.Popen(command, env=subprocess_env(), start_new_session=True, stderr=subprocess.PIPE)
    parts = killed / "predictions.parquet.parts"
    deadline = time.monotonic() + 120
    while not any(parts.glob("part-*.parquet")):  # kill -9 once the first unit is committed
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "report.json").exists()
    assert main([*argv, "--out", str(killed), "--resume"]) == 0
    expected = json.loads((whole / "report.json").read_text())
    got = json.loads((killed / "report.json").read_text())
    assert {k: v for k, v in got.items() if k != "out"} == {k: v for k, v in expected.items() if k != "out"}
