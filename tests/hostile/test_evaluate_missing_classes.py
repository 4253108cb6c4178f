"""Evaluation never scores a missing class as 0 silently: a classifier's data with classes the model does not know
is refused in one line before any work; retrieval queries whose classes are not in the gallery are refused in one
line (open-set splits), and a partial overlap is counted in the report and the summary."""

from __future__ import annotations

import json
import shutil

from conftest import TINY
from pictag.cli.main import main
from pictag.testing import save_colour_objects

TINY = [*TINY, "--batch-size", "16"]


def test_open_set_splits_are_refused_and_leave_one_out_is_offered(tmp_path, capsys):
    data = save_colour_objects(tmp_path / "data", objects=2, views=2)
    splits = tmp_path / "open.csv"
    assert main(["splits", str(data), "--out", str(splits), "--by", "class", "--ratios", "0.5,0.25,0.25"]) == 0
    capsys.readouterr()
    argv = ["evaluate", *TINY, "--splits", str(splits), "--query", "test", "--gallery", "train,val"]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none of the 1 query classes is in the gallery" in err
    assert "leave out --gallery" in err and not (tmp_path / "eval" / "report.json").exists()
    # What the message offers: the test classes searched among themselves.
    assert main([*argv[:-2], "--recall-at", "1,3", "--out", str(tmp_path / "loo")]) == 0
    assert json.loads((tmp_path / "loo" / "report.json").read_text())["queries_with_class_in_gallery"] == 4


def test_a_partial_overlap_is_reported_as_counts(tmp_path, capsys):
    gallery = save_colour_objects(tmp_path / "gallery", objects=2, views=2)
    query = tmp_path / "query"
    shutil.copytree(gallery, query)
    shutil.rmtree(gallery / "grey")
    out = tmp_path / "eval"
    assert main(["evaluate", *TINY, "--query", str(query), "--gallery", str(gallery), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert (report["queries"], report["queries_with_class_in_gallery"], report["query_classes_not_in_gallery"]) == (
        16,
        12,
        1,
    )
    assert "only 12 of 16 queries have their class in the gallery: 1 query class(es) are not in it (grey: 4)" in printed


def test_classes_the_classifier_does_not_know_are_refused_before_any_work(tmp_path, capsys):
    data = save_colour_objects(tmp_path / "data", objects=1, views=1)
    labels = ["--labels", "red,green,blue"]  # no grey
    for argv in (
        ["evaluate", *TINY, *labels, "--data", str(data), "--out", str(tmp_path / "eval")],
        ["classify", str(data), *TINY, *labels, "--report", "--out", str(tmp_path / "p.csv")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "1 class(es) the model does not know: grey (1 images)" in err, err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "p.csv").exists()
