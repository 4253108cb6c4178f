"""`pictag evaluate` on a tiny random timm model: splits and labelled folders, leave-one-out, the report files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import TINY
from pictag.cli.main import main
from pictag.data.sources import open_source
from pictag.eval.retrieval import recall_at_k
from pictag.models import create_model
from pictag.pipeline.runner import embed_all
from pictag.testing import save_colour_objects

TINY = [*TINY, "--batch-size", "16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 colour classes × 4 objects × 3 views."""
    return save_colour_objects(tmp_path_factory.mktemp("eval") / "data")


def test_evaluate_splits_writes_the_report_and_matches_a_direct_computation(data, tmp_path, capsys):
    splits = tmp_path / "splits.csv"
    assert main(["splits", str(data), "--out", str(splits), "--ratios", "0.5,0.25,0.25"]) == 0
    out = tmp_path / "eval"
    argv = ["evaluate", *TINY, "--splits", str(splits), "--query", "test", "--gallery", "train,val"]
    assert main([*argv, "--recall-at", "1,3", "--out", str(out), "--examples", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"recall@1", "recall@3", "map@r", "queries", "gallery"} <= set(report)
    assert report["queries"] == 4 * 3 and report["gallery"] == 4 * 3 * 3
    assert "Recall@1" in capsys.readouterr().out
    for name in ("per_class.csv", "recall_at_k.png", "retrievals.png", "config.yaml"):
        assert (out / name).stat().st_size > 0
    assert len((out / "per_class.csv").read_text().splitlines()) == 1 + 4

    # The same numbers from the embeddings computed here, split by the CSV's split column.
    rows = [line.split(",") for line in splits.read_text().splitlines()[1:]]
    split_of = {path: split for path, _, _, split in rows}
    encoder = create_model("timm:test_efficientnet_gn", random_weights=True, device="cpu", precision="fp32")
    embedded = embed_all(open_source(splits, labelled=True, label_column="class"), encoder, desc="test")
    features, labels = embedded.features.numpy(), np.array(embedded.labels)
    test = np.array([split_of[k] == "test" for k in embedded.keys])
    expected = recall_at_k(features[test], labels[test], features[~test], labels[~test], [1, 3])
    assert report["recall@1"] == pytest.approx(expected[1]) and report["recall@3"] == pytest.approx(expected[3])
    # Solid colours are told apart even by random weights: far above the 1-in-4 of chance.
    assert report["recall@1"] >= 0.75


def test_evaluate_folders_leave_one_out_and_errors(data, tmp_path, capsys):
    out = tmp_path / "loo"
    assert main(["evaluate", *TINY, "--query", str(data), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["leave_one_out"] and report["queries"] == report["gallery"] == 48
    capsys.readouterr()

    def error(*argv):
        assert main(["evaluate", *TINY, *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "--out is needed" in error("--query", str(data))
    assert "Recall@60 asks for more neighbours than the gallery's 47" in error(
        "--query", str(data), "--recall-at", "1,60", "--out", str(tmp_path / "x")
    )
    splits = tmp_path / "s.csv"
    assert main(["splits", str(data), "--out", str(splits), "--ratios", "0.5,0.5"]) == 0
    capsys.readouterr()
    assert "split 'test' of" in error("--splits", str(splits), "--query", "test", "--out", str(tmp_path / "x"))
    assert "both name split 'val'" in error(
        "--splits", str(splits), "--query", "val", "--gallery", "train,val", "--out", str(tmp_path / "x")
    )
    assert "does not exist" in error("--query", "test", "--out", str(tmp_path / "x"))


def test_a_run_directory_is_evaluated_into_its_eval_folder_and_can_be_a_gallery(data, tmp_path):
    from pictag.models.run_dir import save_run_model

    encoder = create_model("timm:test_efficientnet_gn", random_weights=True, device="cpu", precision="fp32")
    run = tmp_path / "run"
    save_run_model(run / "best", encoder, None, task="embedding", classes=None, metrics={})
    options = ["--workers", "0", "--device", "cpu"]
    assert main(["evaluate", "--model", str(run), "--query", str(data), *options]) == 0
    assert json.loads((run / "eval" / "report.json").read_text())["queries"] == 48
    gallery = tmp_path / "gallery"
    assert main(["embed", str(data), "--model", str(run), "--labelled", "--out", str(gallery), *options]) == 0
    out = tmp_path / "preds.csv"
    assert main(["classify", str(data), "--gallery", str(gallery), "--knn-k", "1", "--out", str(out), *options]) == 0
    # Each image finds itself in the gallery: with K=1 its own label.
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 48 and all(row["key"].split("/")[0] == row["label"] for row in rows)
