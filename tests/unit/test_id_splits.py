"""ID-grouped and class-held-out train/val/test splits, and reading the splits CSV back."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from pictag.data.splits import class_split, id_split, parse_ratios, read_splits
from pictag.errors import PictagError


def synthetic(classes: int = 5, ids: int = 20, seed: int = 0) -> tuple[list[str], list[str]]:
    """classes × ids objects with 1 to 6 images each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c in range(classes):
        for i in range(ids):
            n = int(rng.integers(1, 7))
            labels += [f"c{c}"] * n
            groups += [f"c{c}-obj{i}"] * n
    return labels, groups


def test_no_id_crosses_splits_and_ratios_hold_per_class():
    labels, groups = synthetic()
    splits, single = id_split(labels, groups, (0.7, 0.15, 0.15), seed=0)
    assert single == []
    where = defaultdict(set)
    for group, split in zip(groups, splits, strict=True):
        where[group].add(split)
    assert all(len(s) == 1 for s in where.values())
    for label in set(labels):
        counts = Counter(s for lab, s in zip(labels, splits, strict=True) if lab == label)
        total = sum(counts.values())
        # Whole IDs of at most 6 images: each split is within one ID of its share.
        for name, ratio in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=True):
            assert abs(counts[name] - ratio * total) <= 6, (label, counts)
    assert id_split(labels, groups, (0.7, 0.15, 0.15), seed=0)[0] == splits
    assert id_split(labels, groups, (0.7, 0.15, 0.15), seed=1)[0] != splits


def test_single_id_class_goes_to_train_and_same_id_in_two_classes_is_an_error():
    splits, single = id_split(["a", "a", "b", "b", "b"], ["x", "x", "y", "z", "w"], (0.5, 0.5))
    assert single == ["a"] and splits[:2] == ["train", "train"]
    with pytest.raises(PictagError, match="ID 'x' is in class folders 'a' and 'b'"):
        id_split(["a", "b"], ["x", "x"], (0.5, 0.5))


def test_class_split_holds_whole_classes_out():
    labels = [f"obj{c}" for c in range(100) for _ in range(18)]
    splits = class_split(labels, (0.7, 0.15, 0.15), seed=0)
    per_class = defaultdict(set)
    for label, split in zip(labels, splits, strict=True):
        per_class[label].add(split)
    assert all(len(s) == 1 for s in per_class.values())
    assert Counter(next(iter(s)) for s in per_class.values()) == {"train": 70, "val": 15, "test": 15}


def test_ratios_must_sum_to_one():
    assert parse_ratios("0.7,0.15,0.15") == (0.7, 0.15, 0.15)
    with pytest.raises(PictagError, match=r"sum to 1.1, not 1"):
        parse_ratios("0.8,0.15,0.15")
    with pytest.raises(PictagError, match="fractions"):
        parse_ratios("0.7,x")


def test_read_splits_resolves_paths_and_refuses_bad_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    csv = tmp_path / "splits.csv"
    csv.write_text("path,class,id,split\ndata/a/x_1.jpg,a,x,train\ndata/a/y_1.jpg,a,y,test\n")
    table = read_splits(csv, root=data)
    assert table.paths == (str(tmp_path / "data/a/x_1.jpg"), str(tmp_path / "data/a/y_1.jpg"))
    assert table.select("test").keys() == ["a/y_1.jpg"] and table.names == ["train", "test"]
    assert len(table.select("train,test")) == 2
    with pytest.raises(PictagError, match="split 'val' of .* is empty"):
        table.select(["train", "val"])
    with pytest.raises(PictagError, match="not inside"):
        read_splits(csv, root=data / "a" / "b")
    with pytest.raises(PictagError, match="does not exist"):
        read_splits(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("path,label\nx.jpg,a\n")
    with pytest.raises(PictagError, match="no column 'class'"):
        read_splits(tmp_path / "bad.csv")
