"""`pictag classify` end to end: sources, corrupt records, outputs, resume after kill -9, and bad input."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import jpeg_bytes, photos, subprocess_env, write_tar
from pictag import classify
from pictag.cli.main import main
from pictag.data import build_tar_index
from pictag.errors import AlreadyComplete, PictagError

LABELS = "cat,astronaut,coffee,rocket"


def _read(path):
    return (pq.read_table(path) if str(path).endswith(".parquet") else pacsv.read_csv(path)).to_pylist()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def members() -> dict[str, bytes]:
    """Good images in several modes, and every kind of bad record."""
    good = {f"{name}.jpg": jpeg_bytes(img.resize((120, 90))) for name, img in photos().items()}
    good["gray.png"] = _png_bytes(photos()["camera"].convert("L").resize((64, 64)))
    good["palette.png"] = _png_bytes(photos()["coffee"].resize((64, 48)).convert("P"))
    good["rgba.png"] = _png_bytes(photos()["rocket"].resize((64, 48)).convert("RGBA"))
    good["cmyk.jpg"] = jpeg_bytes(photos()["chelsea"].resize((64, 48)).convert("CMYK"))
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg_bytes(photos()["astronaut"])[:1500],
        "notes.jpg": b"this is not an image at all",
        "garbage.png": b"\x89PNG\r\n\x1a\n" + os.urandom(300),
    }
    return {**good, **bad}


BAD = {"empty.jpg", "truncated.jpg", "notes.jpg", "garbage.png"}


def test_folder_with_corrupt_images_reports_them_and_classifies_the_rest(tmp_path, members, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, data in members.items():
        (folder / name).write_bytes(data)
    result = classify(str(folder), str(tmp_path / "out.csv"), LABELS, model=spec, checkpoint=str(checkpoint), top_k=3)
    rows = _read(result.out)
    assert sorted(r["key"] for r in rows) == sorted(set(members) - BAD)
    assert set(rows[0]) == {"key", "label", "score", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3"}
    assert all(r["label"] == r["label_1"] and r["score_1"] >= r["score_2"] >= r["score_3"] for r in rows)
    errors = {r["key"]: r["reason"] for r in _read(result.errors_out)}
    assert set(errors) == BAD
    assert "empty" in errors["empty.jpg"] and "not an image" in errors["notes.jpg"]
    assert (result.classified, result.errors) == (len(members) - len(BAD), len(BAD))
    saved = yaml.safe_load(result.config_out.read_text())
    assert saved["model"] == spec and saved["top_k"] == 3
    assert not (tmp_path / "out.csv.parts").exists()


def test_tar_with_index_through_the_cli(tmp_path, members, tiny_hf_clip, capsys):
    tar = write_tar(tmp_path / "zip1.tar", members)
    index = build_tar_index(tar, tmp_path / "index.parquet")
    out = tmp_path / "results.parquet"
    args = [str(tar), "--index", str(index), "--labels", LABELS, "--out", str(out), "--model", f"hf:{tiny_hf_clip}"]
    assert main(["classify", *args, "--threshold", "0.99", "--workers", "2", "--batch-size", "3"]) == 0
    rows = _read(out)
    assert sorted(r["key"] for r in rows) == sorted(set(members) - BAD)
    assert {r["label"] for r in rows} == {"unknown"}  # no tiny-model score reaches 0.99
    summary = capsys.readouterr().out
    assert f"{len(members) - len(BAD)} images" in summary and "s in the model" in summary
    # The resolved config reproduces the run.
    config = tmp_path / "results.config.yaml"
    again = tmp_path / "again.parquet"
    assert main(["classify", "--config", str(config), "--out", str(again)]) == 0
    assert sorted(_read(again), key=lambda r: r["key"]) == sorted(rows, key=lambda r: r["key"])


def test_existing_interrupted_and_changed_runs_are_refused(tmp_path, photo_dir, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    out = tmp_path / "out.csv"
    options = dict(model=spec, checkpoint=str(checkpoint))
    classify(str(photo_dir), str(out), LABELS, **options)
    with pytest.raises(PictagError, match="already exists: pass --overwrite"):
        classify(str(photo_dir), str(out), LABELS, **options)
    with pytest.raises(AlreadyComplete, match="already complete"):
        classify(str(photo_dir), str(out), LABELS, resume=True, **options)
    classify(str(photo_dir), str(out), "cat,dog", overwrite=True, **options)
    assert {r["label"] for r in _read(out)} <= {"cat", "dog"}
    # An interrupted run (its parts folder is left) must be resumed with the same labels, or overwritten.
    (tmp_path / "run.csv.parts").mkdir()
    (tmp_path / "run.csv.parts" / "run.yaml").write_text(
        yaml.safe_dump({"labels": "cat,dog", "source": str(photo_dir)})
    )
    with pytest.raises(PictagError, match="interrupted run"):
        classify(str(photo_dir), str(tmp_path / "run.csv"), LABELS, **options)
    with pytest.raises(PictagError, match="labels.*changed"):
        classify(str(photo_dir), str(tmp_path / "run.csv"), LABELS, resume=True, **options)


def test_kill_9_then_resume_gives_every_record_exactly_once(tmp_path, tiny_hf_clip):
    images = {f"img{i:04d}.jpg": jpeg_bytes(Image.new("RGB", (40 + i % 7, 30), (i % 256, 90, 160))) for i in range(300)}
    images.update({"bad1.jpg": b"", "bad2.jpg": b"nope"})
    tar = write_tar(tmp_path / "shard.tar", images)
    out = tmp_path / "out.parquet"
    command = [sys.executable, "-m", "pictag", "classify", str(tar), "--labels", LABELS, "--out", str(out)]
    command += ["--model", f"hf:{tiny_hf_clip}", "--batch-size", "4", "--unit-size", "8", "--workers", "2"]
    env = subprocess_env() | {"PICTAG_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.PIPE)
    parts = tmp_path / "out.parquet.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no progress within 120 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its decoding workers, mid-run
    proc.wait(timeout=30)
    assert not out.exists()
    done_before = sum(pq.read_metadata(p).num_rows for p in parts.glob("part-*.parquet"))
    assert 0 < done_before < len(images)
    finished = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    keys = [r["key"] for r in _read(out)]
    assert len(keys) == len(set(keys)) == len(images) - 2
    errors = [r["key"] for r in _read(tmp_path / "out.errors.csv")]
    assert sorted(errors) == ["bad1.jpg", "bad2.jpg"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing_dir", "--labels", "a", "--out", "o.csv"], "does not exist"),
        (["{src}", "--labels", " , ", "--out", "o.csv"], "label list is empty"),
        (["{src}", "--labels", "a", "--out", "o.txt"], "must end in .csv or .parquet"),
        (["{src}", "--labels", "a", "--out", "o.csv", "--top-k", "0"], "--top-k must be at least 1"),
        (["{src}", "--labels", "a", "--out", "o.csv", "--model", "open_clip:NoSuchNet/x"], "unknown open_clip model"),
        (["{src}", "--labels", "a", "--out", "o.csv", "--model", "timm:resnet18", "--random-weights"], "image-only"),
        (["{tar}", "--index", "{bad_index}", "--labels", "a", "--out", "o.csv"], "index"),
        (["{src}", "--labels", "a", "--out", "o.csv", "--config", "missing.yaml"], "config file missing.yaml"),
        (["{src}", "--labels", "a", "--out", "o.csv", "--templates", "nope"], "templates"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, photo_dir, args, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tar = write_tar(tmp_path / "t.tar", {"a.jpg": jpeg_bytes(Image.new("RGB", (8, 8)))})
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    fill = {"src": str(photo_dir), "tar": str(tar), "bad_index": str(tmp_path / "bad.parquet")}
    assert main(["classify", *(a.format(**fill) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_bad_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_help_on_every_command(capsys):
    from pictag.cli.main import COMMANDS

    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: pictag" in capsys.readouterr().out
