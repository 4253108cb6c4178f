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
from pictag.pipeline.plan import plan_digest, plan_units
from pictag.storage.parts import PartStore
from pictag.storage.tables import output_format, write_table


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


def test_parts_lock_merge_and_resume_on_an_fsspec_url():
    import uuid

    from pictag.options import ClassifyConfig
    from pictag.pipeline.job import RUN_FILE, Run
    from pictag.pipeline.plan import PLAN_FILE, Unit

    root = f"memory://pictag-test-{uuid.uuid4().hex[:8]}"
    units = [Unit(i, f"u{i}", None, 2) for i in range(3)]
    cfg = ClassifyConfig(source="imgs/", out=f"{root}/r.csv", labels="a,b")
    run = Run(PartStore(f"{root}/r.csv.parts"), f"{root}/r.csv", complete=False)
    run.start(cfg, ("labels",), resume=False, overwrite=False)
    run.check_inputs(cfg, weights_id="w", units=units)
    assert run.parts.exists(RUN_FILE) and run.parts.exists(PLAN_FILE)
    with pytest.raises(PictagError, match="being written by pid"):
        PartStore(f"{root}/r.csv.parts").lock()  # a fresh lease is respected
    for unit in units[:2]:
        run.parts.commit(unit, pa.table({"key": [f"{unit.id}a", f"{unit.id}b"]}))
    run.parts.commit(units[1], pa.table({"key": ["u1a", "u1b"]}))  # a retry: still one part
    assert run.parts.pending(units) == units[2:] and run.parts.rows() == 4 and run.parts.temporaries() == []
    run.parts.unlock()
    again = Run(PartStore(f"{root}/r.csv.parts"), f"{root}/r.csv", complete=False)
    with pytest.raises(PictagError, match="the weights behind the model spec changed"):
        again.start(cfg, ("labels",), resume=True, overwrite=False)
        again.check_inputs(cfg, weights_id="other", units=units)
    again.parts.unlock()
    path, rows = write_table(f"{root}/r.csv", again.parts.tables(), pa.schema([("key", pa.string())]))
    assert (path, rows) == (f"{root}/r.csv", 4)
    import fsspec

    assert fsspec.open(f"{root}/r.csv", "rt").open().read().splitlines()[1:] == ['"u0a"', '"u0b"', '"u1a"', '"u1b"']


def test_file_urls_are_local_paths(tmp_path):
    parts = PartStore(f"file://{tmp_path}/out.parts")
    assert parts.fs is None and parts.folder == tmp_path / "out.parts"
    parts.lock()
    parts.unlock()


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys):
    from pictag.cli.main import main

    (tmp_path / "r.csv").mkdir()
    with pytest.raises(PictagError, match="is a folder: name a file in it"):
        output_format(tmp_path / "r.csv")
    # Before the model is even built: this spec does not exist, and the folder is what is reported.
    code = main(["classify", str(tmp_path), "--labels", "a", "--out", str(tmp_path / "r.csv"), "--model", "hf:/nope"])
    assert code == 2 and "is a folder" in capsys.readouterr().err


def _unshare_available() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


# A small tmpfs in a private mount namespace: a real read-only or full file system, without root.
_WRITER = """
import os, sys, pyarrow as pa
from pictag.errors import PictagError
from pictag.storage.parts import PartStore
from pictag.storage.tables import write_table
from pictag.pipeline.plan import Unit
folder, mode = sys.argv[1], sys.argv[2]
parts = PartStore(folder + "/out.parts")
try:
    if mode == "full":
        parts.lock()
        parts.commit(Unit(0, "small", None, 1), pa.table({"key": ["a"]}))
        parts.commit(Unit(1, "big", None, 1), pa.table({"blob": [os.urandom(512 * 1024)]}))
    else:
        parts.lock()
except PictagError as exc:
    print(exc)
    print(sorted(os.listdir(folder + "/out.parts")) if os.path.isdir(folder + "/out.parts") else [])
"""


@pytest.mark.skipif(not _unshare_available(), reason="needs unprivileged user namespaces (unshare)")
@pytest.mark.parametrize("mode", ["read-only", "full"])
def test_a_read_only_or_full_file_system_is_one_line_and_a_full_one_says_resume_works(tmp_path, mode):
    import subprocess
    import sys

    from conftest import subprocess_env

    mount = tmp_path / "fs"
    mount.mkdir()
    options = "size=256k,ro" if mode == "read-only" else "size=256k"
    script = f'mount -t tmpfs -o {options} tmpfs "$1" && exec "{sys.executable}" -c "$2" "$1" {mode}'
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(mount), _WRITER]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    message, listing = done.stdout.splitlines()
    if mode == "read-only":
        assert "read-only file system; choose another --out" in message
    else:
        assert "no space left" in message and "rerun with --resume" in message
        assert "part-000000" in listing and ".tmp" not in listing  # the committed part stays; no temporary left
