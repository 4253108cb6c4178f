"""`pictag verify`: an output is checked against the plan its run saved (keys, duplicates, strays, temporaries)."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from conftest import tar_source
from pictag.cli.main import main
from pictag.distributed.verify import verify_output
from pictag.errors import PictagError
from pictag.options import ClassifyConfig
from pictag.pipeline.job import Run
from pictag.pipeline.plan import plan_units, unit_keys
from pictag.storage.parts import ERRORS_SCHEMA, PartStore
from pictag.storage.tables import write_table

SCHEMA = pa.schema([("key", pa.string())])


def _committed(tmp_path, units, out):
    """A classify-like run on `units`, every unit committed with its keys (the broken member as an error row)."""
    cfg = ClassifyConfig(source="t.tar", out=str(out), labels="a,b")
    run = Run(PartStore(f"{out}.parts"), out, complete=False)
    run.start(cfg, ("labels",), resume=False, overwrite=False)
    run.check_inputs(cfg, weights_id="w", units=units)
    for unit in units:
        keys = unit_keys(unit)
        good = [k for k in keys if k != "broken.jpg"]
        failed = [(k, "unreadable") for k in keys if k == "broken.jpg"]
        errors = pa.table(list(zip(*failed)), schema=ERRORS_SCHEMA) if failed else None
        run.parts.commit(unit, pa.table([good], schema=SCHEMA), errors)
    return run


def test_a_whole_run_verifies_in_parts_and_merged_and_every_fault_is_counted(tmp_path, capsys):
    source, members = tar_source(tmp_path)
    units = plan_units(source, unit_size=7)
    out = tmp_path / "r.parquet"
    run = _committed(tmp_path, units, out)
    report = verify_output(out)  # an unmerged run: its parts folder
    assert report.ok and (report.units, report.committed, report.rows, report.errors) == (5, 5, 30, 1)

    parts = tmp_path / "r.parquet.parts"
    shutil.copy(parts / units[0].part_name, parts / "part-000099-deadbeef.parquet")  # a foreign, duplicating part
    (parts / f".{units[1].part_name}.1-abc.tmp").write_bytes(b"half")
    (parts / units[2].part_name).unlink()
    report = verify_output(out)
    assert not report.ok
    assert report.stray == ["part-000099-deadbeef.parquet"] and len(report.missing) == 1
    assert report.duplicate_count == 7 and len(report.temporaries) == 1 and not report.keys_match
    assert main(["verify", str(out)]) == 2
    assert "FAILED" in capsys.readouterr().err

    (parts / "part-000099-deadbeef.parquet").unlink()
    (parts / f".{units[1].part_name}.1-abc.tmp").unlink()
    run.parts.commit(units[2], pa.table([unit_keys(units[2])], schema=SCHEMA))
    write_table(out, run.parts.tables(), SCHEMA)
    write_table(tmp_path / "r.errors.csv", run.parts.tables(errors=True), ERRORS_SCHEMA)
    run.finish()
    run.parts.remove()
    assert (tmp_path / "r.plan.parquet").is_file()
    assert main(["verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "OK" in printed and "31 found (30 results, 1 errors), 31 planned" in printed


def test_verify_without_a_plan_is_one_line(tmp_path):
    write_table(tmp_path / "x.csv", [pa.table({"key": ["a"]})], SCHEMA)
    with pytest.raises(PictagError, match="no plan found"):
        verify_output(tmp_path / "x.csv")
