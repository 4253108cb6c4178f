"""Hostile names, folders, tars and indexes, and errors raised while DataLoader workers are alive."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hostile_inputs import CHILD_TIMEOUT, encode, interrupt_after_commits, model_args, one_line
from PIL import Image

from conftest import ROOT, subprocess_env
from pictag.cli.main import main
from pictag.data import build_tar_index, open_source

JPEG = encode(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG")
# Names a careless or hostile user gives: bytes that are not UTF-8, a newline, a leading dash, 250 bytes.
NAMES = [b"caf\xe9.jpg", b"\xff\xfe.png", b"new\nline.jpg", b"-rf.jpg", b"x" * 246 + b".jpg", b"ok.jpg"]
KEYS = ["caf\\xe9.jpg", "\\xff\\xfe.png", "new\nline.jpg", "-rf.jpg", "x" * 246 + ".jpg", "ok.jpg"]


def _tar_of(path, members: dict[bytes, bytes]):
    Path(os.fsdecode(os.path.dirname(os.fsencode(path)))).mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(os.fsdecode(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _folder_of(path, members: dict[bytes, bytes]):
    for name, data in members.items():
        full = os.path.join(os.fsencode(path), name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return path


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_any_name_is_a_valid_key_in_csv_and_parquet_and_resume_gets_past_it(
    tmp_path, kind, tiny_open_clip, monkeypatch
):
    members = {**dict.fromkeys(NAMES, JPEG), "d\xe9j\xe0/a.jpg".encode("latin-1"): JPEG}
    source = (_folder_of if kind == "folder" else _tar_of)(
        tmp_path / ("imgs" if kind == "folder" else "s.tar"), members
    )
    expected = sorted([*KEYS, "d\\xe9j\\xe0/a.jpg"])
    args = [
        "classify",
        str(source),
        "--labels",
        "a,b",
        "--workers",
        "0",
        "--unit-size",
        "2",
        *model_args(tiny_open_clip),
    ]
    with monkeypatch.context() as patch:
        interrupt_after_commits(patch, 1)
        assert main([*args, "--out", str(tmp_path / "o.parquet")]) == 130
    assert main([*args, "--out", str(tmp_path / "o.parquet"), "--resume"]) == 0
    assert sorted(pq.read_table(tmp_path / "o.parquet").column("key").to_pylist()) == expected
    assert main([*args, "--out", str(tmp_path / "o.csv")]) == 0
    assert sorted(pacsv.read_csv(tmp_path / "o.csv").column("key").to_pylist()) == expected


def test_pictag_index_of_a_tar_with_non_utf8_names(tmp_path):
    tar = _tar_of(tmp_path / "caf\udce9.tar", dict.fromkeys(NAMES, JPEG))
    assert main(["index", str(tar), "--out", str(tmp_path / "i.parquet")]) == 0
    assert sorted(pq.read_table(tmp_path / "i.parquet").column("key").to_pylist()) == sorted(KEYS)
    records = list(open_source(tar, index=tmp_path / "i.parquet"))  # and the index is found to belong to its tar
    assert sorted(r.key for r in records) == sorted(KEYS) and all(r.data == JPEG for r in records)


def _records_as_nobody(folder) -> list[list]:
    """(key, error) of each record of `folder` opened by an unprivileged user (root lists any folder)."""
    if os.geteuid() != 0:
        return [[r.key, r.error] for r in open_source(folder)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, json.dumps([[r.key, r.error] for r in open_source(folder)]).encode())
        except BaseException as exc:
            os.write(write, json.dumps([["exception", repr(exc)]]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_an_unlistable_subfolder_is_an_error_record_and_a_link_loop_is_walked_once(tmp_path):
    # Under root, pytest's tmp_path sits in a folder only root may cross: the unprivileged child needs another.
    base = Path(tempfile.mkdtemp(prefix="pictag-hostile-")) if os.geteuid() == 0 else tmp_path
    base.chmod(0o755)
    folder = _folder_of(base / "imgs", {b"ok/a.jpg": JPEG, b"locked/b.jpg": JPEG, b"c.jpg": JPEG})
    (folder / "ok" / "loop").symlink_to("..")  # a link back up the tree
    (folder / "locked").chmod(0)
    try:
        records = dict(_records_as_nobody(folder))
    finally:
        (folder / "locked").chmod(0o755)
        if base != tmp_path:
            shutil.rmtree(base)
    assert sorted(records) == ["c.jpg", "locked/", "ok/a.jpg"]
    assert "cannot list this folder (Permission denied)" in records["locked/"]
    assert records["c.jpg"] is None and records["ok/a.jpg"] is None


def _index(tar, out, **edits):
    table = pq.read_table(build_tar_index(tar, out))
    for column, values in edits.items():
        table = table.set_column(
            table.column_names.index(column), column, pa.array(values, table.schema.field(column).type)
        )
    pq.write_table(table, out)
    return out


@pytest.fixture
def tar(tmp_path):
    return _tar_of(tmp_path / "zip1.tar", {f"{i}.jpg".encode(): JPEG for i in range(4)})


@pytest.mark.parametrize(
    "case, message",
    [
        ("negative offset", "negative offsets"),
        ("duplicate key", "lists a key twice"),
        ("foreign", "does not belong to zip1.tar"),
        ("not parquet", "as Parquet"),
        ("no key column", "has no key column"),
        ("empty csv", "Empty CSV file"),
        ("csv without a path column", "has no column 'path'"),
    ],
)
def test_bad_indexes_and_tables_are_one_line_and_exit_2(tmp_path, tar, case, message, capsys):
    index, source = tmp_path / "i.parquet", str(tar)
    if case == "negative offset":
        _index(tar, index, offset=[-512, 1024, 2048, 3072])
    elif case == "duplicate key":
        _index(tar, index, key=["0.jpg", "0.jpg", "2.jpg", "3.jpg"])
    elif case == "foreign":
        other = _tar_of(tmp_path / "other" / "zip1.tar", {b"x.jpg": JPEG * 2, b"y.jpg": JPEG})
        build_tar_index(other, index)
    elif case == "not parquet":
        index.write_bytes(b"PAR1 not really")
    elif case == "no key column":
        pq.write_table(pa.table({"offset": [512], "size": [10]}), index)
    else:
        index = None
        source = str(tmp_path / "t.csv")
        (tmp_path / "t.csv").write_text("" if case == "empty csv" else "file,label\nx.jpg,a\n")
    args = ["classify", source, "--labels", "a,b", "--out", str(tmp_path / "o.csv")]
    assert main(args + (["--index", str(index)] if index else [])) == 2
    assert message in one_line(capsys.readouterr().err)


def test_a_truncated_tar_gives_error_rows_and_exit_0(tmp_path, tar, tiny_open_clip, capsys):
    index = build_tar_index(tar, tmp_path / "i.parquet")
    data = tar.read_bytes()
    cut = tmp_path / "cut" / "zip1.tar"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.csv"
    args = ["classify", str(cut), "--index", str(index), "--labels", "a,b", "--out", str(out), "--workers", "0"]
    assert main([*args, *model_args(tiny_open_clip)]) == 0
    errors = pacsv.read_csv(tmp_path / "o.errors.csv").to_pydict()
    assert errors["key"] and all("truncated copy" in reason for reason in errors["reason"])
    assert pacsv.read_csv(out).num_rows + len(errors["key"]) == 4


DRIVER = """
import json, sys
import pictag.data.sources as sources
from pictag.cli.main import main
from pictag.errors import PictagError

read = sources.FileShard.read

def read_then_fail(self, skip=frozenset()):
    # A unit in the middle of the plan, read by a DataLoader worker: the index or table changed under the run.
    if ":4-6" in self.name:  # the unit, or a batch's run of its records
        raise PictagError("the source changed under the run (raised in a worker)")
    yield from read(self, skip)

sources.FileShard.read = read_then_fail
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps(codes))
sys.exit(max(codes))
"""


def test_errors_while_workers_are_alive_end_in_one_line_and_exit_2_not_134(tmp_path, tiny_hf_clip):
    """Exit 134 ("terminate called without an active exception") shows only in the process's own exit code."""
    import subprocess
    import sys

    folder = _folder_of(tmp_path / "imgs", {f"{i:02d}.jpg".encode(): JPEG for i in range(12)})
    (tmp_path / "empty.csv").write_text("")
    common = ["--labels", "a,b", "--model", f"hf:{tiny_hf_clip}", "--device", "cpu"]
    runs = [
        ["classify", str(folder), "--out", str(tmp_path / "a.csv"), "--workers", "2", "--unit-size", "2", *common],
        ["classify", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "b.csv"), "--workers", "2", *common],
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [2, 2]
    errors = [line for line in done.stderr.splitlines() if line.startswith("pictag ")]
    assert len(errors) == 2 and "Traceback" not in done.stderr and "terminate called" not in done.stderr
    assert errors[0].endswith("the source changed under the run (raised in a worker)")
