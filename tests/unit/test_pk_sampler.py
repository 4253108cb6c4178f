"""The P×K sampler: exact batches, every image once per epoch where possible, short classes reported, one share
per DDP rank, and an order that depends on (seed, epoch) only, so a run continued mid-epoch sees the same batches."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from pictag.errors import PictagError
from pictag.train.sampler import PKSampler


def _batches(sampler: PKSampler, labels: list[int]) -> list[list[int]]:
    flat = [i for i, _ in sampler]
    assert len(flat) % sampler.batch_size == 0
    return [flat[i : i + sampler.batch_size] for i in range(0, len(flat), sampler.batch_size)]


def _check_pk(batch: list[int], labels: list[int], p: int, k: int) -> None:
    counts = Counter(labels[i] for i in batch)
    assert len(counts) == p and set(counts.values()) == {k}, counts


def test_balanced_classes_give_exact_batches_visiting_every_image_once():
    labels = [c for c in range(6) for _ in range(8)]
    sampler = PKSampler(labels, 3, 4, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _batches(sampler, labels)
        assert len(batches) == len(sampler) // 12 == 4
        for batch in batches:
            _check_pk(batch, labels, 3, 4)
        assert sorted(i for batch in batches for i in batch) == list(range(48)), "each image exactly once"
    sampler.set_epoch(0)
    first = _batches(sampler, labels)
    sampler.set_epoch(1)
    assert _batches(sampler, labels) != first, "a new order every epoch"


def test_uneven_and_short_classes_are_filled_and_reported(caplog):
    labels = [0] * 13 + [1] * 5 + [2] * 2 + [3] * 9
    with caplog.at_level(logging.WARNING, logger="pictag.train.sampler"):
        sampler = PKSampler(labels, 2, 4, seed=0, names=["a", "b", "c", "d"])
    assert sampler.short == ["c"]
    assert "1 class(es) have fewer than --samples-per-class 4 images" in caplog.text and ": c" in caplog.text
    batches = _batches(sampler, labels)
    for batch in batches:
        _check_pk(batch, labels, 2, 4)
    assert set(i for batch in batches for i in batch) == set(range(len(labels))), "every image at least once"
    # The fewest batches that can hold every image: class 0 needs 4 chunks, 10 chunks / 2 per batch = 5.
    assert len(batches) == 5


def test_default_p_comes_from_the_batch_size_never_every_class():
    labels = [c for c in range(81) for _ in range(6)]
    sampler = PKSampler(labels, None, 4, seed=0, batch_size=32)
    assert (sampler.p, sampler.batch_size) == (8, 32), "81 classes x 4 would be 324 images"
    _check_pk(_batches(sampler, labels)[0], labels, 8, 4)
    few = [c for c in range(5) for _ in range(4)]
    assert PKSampler(few, None, 4, seed=0, batch_size=32).batch_size == 20, "at most every class"
    assert PKSampler(few, None, 4, seed=0, batch_size=2).batch_size == 4, "at least one class"


def test_ranks_draw_disjoint_batches_that_cover_the_epoch():
    labels = [c for c in range(8) for _ in range(6)]
    whole = PKSampler(labels, 4, 3, seed=5)
    shares = [PKSampler(labels, 4, 3, seed=5, rank=r, world=2) for r in range(2)]
    for s in (whole, *shares):
        s.set_epoch(2)
    all_batches = _batches(whole, labels)
    per_rank = [_batches(s, labels) for s in shares]
    assert len(per_rank[0]) == len(per_rank[1]) == len(all_batches) // 2
    assert sorted(map(tuple, per_rank[0] + per_rank[1])) == sorted(map(tuple, all_batches))


def test_resume_mid_epoch_continues_the_same_order():
    labels = [c for c in range(4) for _ in range(10)]
    a, b = PKSampler(labels, 2, 4, seed=3), PKSampler(labels, 2, 4, seed=3)
    a.set_epoch(1)
    b.set_epoch(1, start=2 * 8)
    assert list(b) == list(a)[16:] and len(b) == len(a) - 16


def test_p_larger_than_the_classes_is_one_line():
    with pytest.raises(PictagError, match="--classes-per-batch 5: the training images have 2 classes"):
        PKSampler([0, 0, 1, 1], 5, 2, seed=0)
