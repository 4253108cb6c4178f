"""`pictag classify IMAGE...` without --out prints its answers and writes nothing; `--out -` streams the rows."""

from __future__ import annotations

import io
import json

import pyarrow.csv as pacsv
import pytest

from pictag import classify
from pictag.cli.main import main

LABELS = "cat,astronaut,coffee,rocket"


@pytest.fixture
def argv(tiny_open_clip, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # where a stray output would land
    spec, checkpoint = tiny_open_clip
    return ["--model", spec, "--checkpoint", str(checkpoint), "--labels", LABELS, "--top-k", "2", "--workers", "0"]


def _approx(rows):
    return [{k: pytest.approx(v, abs=1e-6) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _listing(*folders):
    return {folder: sorted(p.name for p in folder.rglob("*")) for folder in folders}


def test_one_image_prints_a_table_and_writes_nothing(tmp_path, photo_dir, argv, capsys):
    before = _listing(tmp_path, photo_dir)
    assert main(["classify", str(photo_dir / "chelsea.jpg"), *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["key", "label", "score", "label_1", "score_1", "label_2", "score_2"]
    key, label, score, *_ = lines[1].split()
    assert len(lines) == 2 and key == "chelsea.jpg" and label in LABELS.split(",") and 0 < float(score) <= 1
    assert _listing(tmp_path, photo_dir) == before


def test_jsonl_and_streamed_rows_are_the_files_rows(tmp_path, photo_dir, argv, capsys, tiny_open_clip):
    out = tmp_path / "rows.csv"
    assert main(["classify", str(photo_dir), *argv, "--out", str(out)]) == 0
    expected = pacsv.read_csv(out).to_pylist()
    capsys.readouterr()
    assert main(["classify", str(photo_dir), *argv, "--format", "jsonl"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == _approx(expected)
    assert main(["classify", str(photo_dir), *argv, "--out", "-", "--unit-size", "2"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.count('"key"') == 1  # one header, however many units
    # Units of 2 images are other batches: their scores differ in the last float32 bits.
    assert pacsv.read_csv(io.BytesIO(streamed.encode())).to_pylist() == _approx(expected)
    # The Python API mirrors it: no out, the answers in a table.
    spec, checkpoint = tiny_open_clip
    printed = classify(str(photo_dir), labels=LABELS, model=spec, checkpoint=str(checkpoint), top_k=2, workers=0)
    assert printed.table.to_pylist() == _approx(expected)


def test_bad_input_is_one_line(tmp_path, argv, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["classify", str(broken), *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("pictag classify: broken.jpg: ") and "could be read" in err[-1]
    assert main(["classify", str(broken), *argv, "--format", "jsonl", "--out", "x.csv"]) == 2
    assert "--format jsonl prints to stdout" in capsys.readouterr().err
    assert main(["classify", str(broken), *argv, "--resume"]) == 2
    assert "--resume finishes an output file: pass --out FILE" in capsys.readouterr().err
