"""`pictag verify` on damaged outputs: a truncated or garbage results file, part, store shard or plan, a results file
another tool rewrote, a deleted results file. Each is one line and exit 2 (never a traceback), or a
FAILED report naming the damage; a file rewritten with its keys still as text verifies."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile_inputs import one_line

from conftest import tar_source
from pictag.cli.main import main
from pictag.options import ClassifyConfig
from pictag.pipeline.job import Run
from pictag.pipeline.plan import plan_units, unit_keys
from pictag.storage.parts import PartStore
from pictag.storage.tables import write_table

SCHEMA = pa.schema([("key", pa.string())])


def _output(tmp_path, name: str, merged: bool):
    """A classify-like output of 30 keys in 5 units: merged into `name`, or left as its parts folder."""
    units = plan_units(tar_source(tmp_path, bad=())[0], unit_size=6)
    out = tmp_path / name
    run = Run(PartStore(f"{out}.parts"), out, complete=False)
    run.start(ClassifyConfig(source="t.tar", out=str(out), labels="a,b"), ("labels",), resume=False, overwrite=False)
    run.check_inputs(ClassifyConfig(source="t.tar", out=str(out), labels="a,b"), weights_id="w", units=units)
    for unit in units:
        run.parts.commit(unit, pa.table([unit_keys(unit)], schema=SCHEMA))
    if merged:
        write_table(out, run.parts.tables(), SCHEMA)
        run.finish()
        run.parts.remove()
    run.parts.unlock()
    return out


def _verify(out, capsys) -> str:
    assert main(["verify", str(out)]) == 2
    return one_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", ["r.parquet", "r.csv"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_results_file_is_one_line(tmp_path, capsys, name, damage):
    out = _output(tmp_path, name, merged=True)
    data = out.read_bytes()
    out.write_bytes({"truncated": data[: len(data) // 3], "garbage": os.urandom(4000), "empty": b""}[damage])
    line = _verify(out, capsys)
    assert "is damaged" in line or "NOT equal to the plan's" in line  # a CSV cut at a row boundary is short, not bad
    assert line.isascii()


def test_a_results_file_rewritten_by_pandas_verifies_while_its_keys_are_text(tmp_path, capsys):
    out = _output(tmp_path, "r.parquet", merged=True)
    frame = pq.read_table(out).to_pandas()
    frame.to_parquet(out)  # with a pandas index column and pandas metadata
    assert main(["verify", str(out)]) == 0, capsys.readouterr().err
    frame["key"] = frame["key"].astype("category")
    frame.to_parquet(out)
    assert main(["verify", str(out)]) == 0, capsys.readouterr().err
    frame["key"] = range(len(frame))
    frame.to_parquet(out)
    assert "not text: it was rewritten by another tool" in _verify(out, capsys)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_part_or_store_shard_is_named_in_a_failed_report(tmp_path, capsys, damage):
    out = _output(tmp_path, "r.parquet", merged=False)
    part = sorted((tmp_path / "r.parquet.parts").glob("part-*"))[1]
    part.write_bytes(part.read_bytes()[:200] if damage == "truncated" else os.urandom(3000))
    line = _verify(out, capsys)
    assert "FAILED" in line and f"damaged parts: 1 ({part.name} is damaged" in line


def test_a_damaged_plan_is_one_line(tmp_path, capsys):
    out = _output(tmp_path, "r.parquet", merged=True)
    (tmp_path / "r.plan.parquet").write_bytes(b"PAR1" + os.urandom(100) + b"PAR1")
    assert "the plan" in _verify(out, capsys) and "is damaged" in _verify(out, capsys)


def test_a_deleted_results_file_is_named_as_deleted_not_as_unplanned(tmp_path, capsys):
    out = _output(tmp_path, "r.csv", merged=True)
    out.unlink()
    line = _verify(out, capsys)
    assert "does not exist, but its plan" in line and "no plan found" not in line


def test_missing_units_are_not_called_equal_to_the_plan(tmp_path, capsys):
    out = _output(tmp_path, "r.parquet", merged=False)
    sorted((tmp_path / "r.parquet.parts").glob("part-*"))[0].unlink()
    line = _verify(out, capsys)
    assert "30 planned, 6 of them in units without a part; equal to the plan's for the committed units" in line
