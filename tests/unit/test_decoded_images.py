"""The one decode dataset: batched reads by position, and the runner's ordered, unit-finishing batches over it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from conftest import jpeg_bytes, tar_source
from pictag.data import open_source
from pictag.data.crops import DecodedImages, Decoder
from pictag.data.sources import FileShard
from pictag.errors import PictagError
from pictag.models.preprocess import Preprocess
from pictag.pipeline.plan import plan_units
from pictag.pipeline.runner import UnitViews, crop_batches

SMALL = Preprocess((16, 16), 16, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class CountedShard(FileShard):
    """A folder shard that counts its passes (each `read` opens the records it is asked for, one by one)."""

    passes: list | None = None

    def read(self, skip=frozenset()):
        self.passes.append(len(self))
        return super().read(skip)


def _folder(tmp_path, n: int) -> list[str]:
    names = [f"{i:02d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(jpeg_bytes(Image.new("RGB", (20, 20), (10 * i, 0, 0))))
    if n > 4:
        (tmp_path / names[4]).write_bytes(b"\xff\xd8 not a jpeg")
    return names


def test_a_batch_reads_each_run_of_consecutive_positions_in_one_pass(tmp_path):
    names = _folder(tmp_path, 12)
    passes: list[int] = []
    shard = CountedShard("all", str(tmp_path), tuple(names), passes=passes)
    images = DecodedImages([shard], [((0, i),) for i in range(12)] + [()], Decoder(SMALL))
    batch = images.__getitems__([0, 1, 2, 3, 4, 5, 9, 3, 12])
    assert passes == [6, 1, 1]  # 0-5 together, then 9 and 3 alone; the placeholder reads nothing
    assert [item["index"] for item in batch] == [0, 1, 2, 3, 4, 5, 9, 3, 12]
    assert [item["key"] for item in batch] == [*names[:6], names[9], names[3], None]
    assert batch[4]["crop"] is None and batch[4]["error"][0] == names[4]
    assert batch[8]["crop"].shape == (16, 16, 3) and not batch[8]["crop"].any()
    for item in batch[:4] + batch[5:8]:  # the same crops as reading each position on its own
        assert torch.equal(item["crop"], images[item["index"]]["crop"])


def test_a_unit_plan_reads_in_order_with_full_batches_past_a_skip_set(tmp_path):
    names = _folder(tmp_path, 11)
    units = plan_units(open_source(str(tmp_path)), unit_size=3)  # 3 + 3 + 3 + 2 records
    skip = {names[1], *names[3:6]}  # one record of the first unit, the whole second unit
    views = UnitViews(units, skip)
    assert len(views) == 7 and views[0] == ((0, 0),) and views[1] == ((0, 2),) and views[2] == ((2, 0),)
    batches = list(crop_batches(units, Decoder(SMALL), batch_size=3, skip=skip))
    kept = [name for name in names if name not in skip]
    assert [b.keys + [k for k, _ in b.errors] for b in batches] == [kept[:3], kept[3:6], kept[6:]]
    # A unit is finished with the batch that holds its last record; the skipped unit with the batch that passes it.
    assert [b.finished for b in batches] == [[0, 1], [2], [3]]
    assert [b.units for b in batches] == [[0, 0, 2], [2, 2, 3], [3]]


def test_units_with_nothing_to_read_are_still_finished(tmp_path):
    names = _folder(tmp_path, 4)
    units = plan_units(open_source(str(tmp_path)), unit_size=2)
    batches = list(crop_batches(units, Decoder(SMALL), batch_size=8, skip=set(names)))
    assert [(b.keys, b.errors, b.finished) for b in batches] == [([], [], [0, 1])]
    assert batches[0].crops.shape == (0, 16, 16, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_that_cannot_be_read_stops_the_run_with_its_one_line(tmp_path, workers):
    source, _ = tar_source(tmp_path, n=6)
    units = plan_units(source, unit_size=2)
    (tmp_path / "t.index.parquet").write_bytes(b"damaged since it was planned")
    with pytest.raises(PictagError) as caught:
        list(crop_batches(units, Decoder(SMALL), batch_size=2, workers=workers))
    assert "t.index.parquet" in str(caught.value) and "\n" not in str(caught.value)
