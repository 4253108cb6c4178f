"""Shared train/validation splits: stratified, seeded, K-fold and fold columns, with one-line refusals."""

from __future__ import annotations

from collections import Counter

import pytest

from pictag.data.splits import column_split, kfold_split, stratified_split
from pictag.errors import PictagError

LABELS = ["a"] * 10 + ["b"] * 20 + ["c"] * 5


def test_stratified_split_keeps_each_class_share_and_is_seeded():
    train, val = stratified_split(LABELS, 0.2, seed=3)
    assert sorted(train + val) == list(range(len(LABELS))) and not set(train) & set(val)
    assert Counter(LABELS[i] for i in val) == {"a": 2, "b": 4, "c": 1}
    assert stratified_split(LABELS, 0.2, seed=3) == (train, val)
    assert stratified_split(LABELS, 0.2, seed=4) != (train, val)


def test_kfold_folds_partition_the_set():
    vals = [kfold_split(LABELS, 5, fold, seed=0)[1] for fold in range(5)]
    assert sorted(i for val in vals for i in val) == list(range(len(LABELS)))
    assert all(Counter(LABELS[i] for i in val)["c"] == 1 for val in vals)


def test_column_split_takes_the_named_fold():
    assert column_split(["x", "y", "x", 1], "x") == ([1, 3], [0, 2])
    assert column_split([0, 1, 1], 1) == ([0], [1, 2])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: stratified_split(["a", "a", "b"], 0.5), "at least 2 images per class; 1 class(es) have fewer (b (1))"),
        (lambda: stratified_split(LABELS, 1.5), "between 0 and 1"),
        (lambda: kfold_split(LABELS, 6, 0), "--folds 6 needs at least 6 images per class"),
        (lambda: kfold_split(LABELS, 5, 5), "0 <= fold < folds"),
        (lambda: column_split(["x", "x"], "x"), "leave rows on both sides"),
    ],
)
def test_bad_splits_are_refused(call, message):
    with pytest.raises(PictagError, match=None) as raised:
        call()
    assert message in str(raised.value)


def test_training_data_takes_each_kind_of_validation(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fewshot_data import write_class_folders

    from pictag.train.data import load_train_data
    from pictag.train.options import ClassifierConfig

    data = write_class_folders(tmp_path / "data", per_class=5)
    val = write_class_folders(tmp_path / "val", per_class=1, classes=("red", "blue"))
    by = {}
    for name, options in {
        "val": {"val": str(val)},
        "split": {"val_split": 0.2},
        "folds": {"folds": 5, "fold": "1"},
        "none": {},
    }.items():
        by[name] = load_train_data(ClassifierConfig(data=str(data), out="x", **options))
    assert by["val"].classes == ["blue", "green", "red"] and sorted(by["val"].val.labels) == [0, 2]
    assert len(by["split"].train) == 12 and len(by["split"].val) == 3
    assert len(by["folds"].val) == 3 and not set(by["folds"].val.keys) & set(by["folds"].train.keys)
    assert by["none"].val is None and len(by["none"].train) == 15
    table = tmp_path / "table.csv"
    rows = [f"{data / c / f'{i}.jpg'},{c},{'A' if i == 0 else 'B'}" for c in ("red", "blue") for i in range(3)]
    table.write_text("path,label,fold\n" + "\n".join(rows) + "\n")
    folded = load_train_data(ClassifierConfig(data=str(table), out="x", fold="A"))
    assert len(folded.val) == 2 and len(folded.train) == 4 and folded.classes == ["blue", "red"]
