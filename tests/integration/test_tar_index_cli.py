"""Tar indexes through `pictag classify`: a truncated copy runs with error rows and one warning, a foreign index
is refused with exit 2, and an index written by another tool is read without flags."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image

from conftest import jpeg_bytes, subprocess_env, write_tar
from pictag.cli.main import main
from pictag.data import build_tar_index

LABELS = "cat,dog"


def _images(prefix: str) -> dict[str, bytes]:
    return {f"{prefix}{i}.jpg": jpeg_bytes(Image.new("RGB", (32, 24), (40 * i, 90, 160))) for i in range(6)}


def test_truncated_copy_gives_error_rows_one_warning_and_exit_0(tmp_path, tiny_hf_clip):
    images = _images("img")
    tar = write_tar(tmp_path / "data" / "zip1.tar", images)
    index = build_tar_index(tar)
    rows = sorted(pq.read_table(index).to_pylist(), key=lambda r: r["offset"])
    copy = tmp_path / "copy" / "zip1.tar"
    copy.parent.mkdir()
    shutil.copyfile(tar, copy)
    os.truncate(copy, rows[4]["offset"] + 10)  # img4 cut short, img5 gone
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "pictag", "classify", str(copy), "--index", str(index), "--labels", LABELS]
    command += ["--out", str(out), "--model", f"hf:{tiny_hf_clip}", "--workers", "0"]
    env = subprocess_env() | {"PICTAG_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(r["key"] for r in pacsv.read_csv(out).to_pylist()) == [r["key"] for r in rows[:4]]
    errors = pacsv.read_csv(tmp_path / "out.errors.csv").to_pylist()
    assert {r["key"]: r["reason"] for r in errors} == {
        r["key"]: "offset past the end of zip1.tar (truncated copy?)" for r in rows[4:]
    }
    warnings = [line for line in run.stderr.splitlines() if "past the end" in line]
    assert warnings == [
        "pictag: 2 index rows lie past the end of zip1.tar (truncated copy?): they go to the errors file"
    ]


def test_index_of_another_tar_gives_exit_2_and_one_line(tmp_path, tiny_hf_clip, capsys):
    ours = write_tar(tmp_path / "a" / "zip1.tar", _images("img"))
    theirs = write_tar(tmp_path / "b" / "zip1.tar", _images("pic"))
    assert ours.stat().st_size == theirs.stat().st_size
    args = [str(ours), "--index", str(build_tar_index(theirs)), "--labels", LABELS, "--out", str(tmp_path / "o.csv")]
    assert main(["classify", *args, "--model", f"hf:{tiny_hf_clip}", "--workers", "0"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("pictag classify: error: index ") and "does not belong to zip1.tar" in line
    assert line.endswith(f"rebuild it with `pictag index {ours}`")


def test_index_of_another_tool_with_filename_start_length_works_without_flags(tmp_path, tiny_hf_clip):
    images = _images("img")
    tar = write_tar(tmp_path / "zip1.tar", images)
    ours = pq.read_table(build_tar_index(tar, tmp_path / "ours.parquet"))
    theirs = pa.table({"filename": ours["key"], "start": ours["offset"], "length": ours["size"]})
    pq.write_table(theirs, tmp_path / "theirs.parquet")
    out = tmp_path / "out.parquet"
    args = [str(tar), "--index", str(tmp_path / "theirs.parquet"), "--labels", LABELS, "--out", str(out)]
    assert main(["classify", *args, "--model", f"hf:{tiny_hf_clip}", "--workers", "0"]) == 0
    assert sorted(r["key"] for r in pq.read_table(out).to_pylist()) == sorted(images)
    # The override names the same columns.
    again = tmp_path / "again.parquet"
    flags = ["--index-columns", "key=filename,offset=start,size=length", "--model", f"hf:{tiny_hf_clip}"]
    assert main(["classify", *args[:-1], str(again), *flags, "--workers", "0"]) == 0
    assert pq.read_table(again).num_rows == len(images)
