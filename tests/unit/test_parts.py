"""Units of work and committed parts: plans are stable, a unit leaves exactly one part, one writer at a time."""

from __future__ import annotations

import dataclasses
import os
import threading

import pyarrow as pa
import pytest

from conftest import tar_source
from pictag.data import open_source
from pictag.errors import PictagError
from pictag.pipeline.parts import PartStore, output_format, write_table
from pictag.pipeline.plan import plan_digest, plan_units


def test_plan_is_stable_and_splits_shards_into_units(tmp_path):
    source, members = tar_source(tmp_path)
    units = plan_units(source, unit_size=7)
    assert [u.size for u in units] == [7, 7, 7, 7, 3] and len({u.id for u in units}) == 5
    again = plan_units(open_source(tmp_path / "t.tar"), unit_size=7)
    assert [u.id for u in again] == [u.id for u in units] and plan_digest(again) == plan_digest(units)
    assert plan_digest(plan_units(source, unit_size=8)) != plan_digest(units)
    with pytest.raises(PictagError, match="unit-size"):
        plan_units(source, unit_size=0)


def test_a_unit_committed_twice_at_once_leaves_one_part(tmp_path):
    source, _ = tar_source(tmp_path)
    unit = plan_units(source)[0]
    parts = PartStore(tmp_path / "parts")
    table = pa.table({"key": [f"k{i}" for i in range(20000)]})
    threads = [threading.Thread(target=parts.commit, args=(unit, table)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in (tmp_path / "parts").iterdir()] == [unit.part_name]
    assert parts.rows() == 20000


def test_a_second_writer_is_refused_while_the_first_holds_the_output(tmp_path):
    first, second = PartStore(tmp_path / "out.parts"), PartStore(tmp_path / "out.parts")
    first.lock()
    with pytest.raises(PictagError, match=f"being written by pid {os.getpid()}"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


@pytest.mark.parametrize("name", ["r.PARQUET", "r.Parquet", "r.CSV"])
def test_output_format_follows_the_extension_in_any_case(tmp_path, name):
    table = pa.table({"key": ["a", "b"]})
    path, rows = write_table(tmp_path / name, [table], table.schema)
    assert rows == 2
    magic = path.read_bytes()[:4]
    assert (magic == b"PAR1") == name.lower().endswith(".parquet")
    with pytest.raises(PictagError, match="must end in .csv or .parquet"):
        output_format(tmp_path / "r.txt")


def test_a_run_in_progress_is_named_as_such_and_an_interrupted_one_needs_resume(tmp_path):
    from pictag.options import ClassifyConfig
    from pictag.pipeline.job import Run

    cfg = ClassifyConfig(source="imgs/", out=str(tmp_path / "r.csv"), labels="a,b")
    units = plan_units(tar_source(tmp_path)[0])
    first = Run(PartStore(tmp_path / "r.csv.parts"), tmp_path / "r.csv", complete=False)
    first.start(cfg, ("labels",), resume=False, overwrite=False)
    first.check_inputs(cfg, weights_id="w", units=units)
    with pytest.raises(PictagError, match=f"being written by pid {os.getpid()}"):
        Run(PartStore(tmp_path / "r.csv.parts"), tmp_path / "r.csv", complete=False).start(
            cfg, ("labels",), resume=True, overwrite=False
        )
    first.parts.unlock()  # as when the first process dies
    again = Run(PartStore(tmp_path / "r.csv.parts"), tmp_path / "r.csv", complete=False)
    with pytest.raises(PictagError, match="interrupted run"):
        again.start(cfg, ("labels",), resume=False, overwrite=False)
    again.parts.unlock()
    with pytest.raises(PictagError, match="labels changed"):
        again.start(dataclasses.replace(cfg, labels="a,c"), ("labels",), resume=True, overwrite=False)
    again.parts.unlock()
    again.start(cfg, ("labels",), resume=True, overwrite=False)
    with pytest.raises(PictagError, match="the weights behind the model spec changed"):
        again.check_inputs(cfg, weights_id="other", units=units)
