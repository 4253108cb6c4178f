"""`pictag splits` under hostile names and options: a path the UTF-8 CSV cannot hold is left out and reported, a
folder as --out and non-finite ratios are one line, and a damaged or special splits file is one line when read."""

from __future__ import annotations

import os

import pytest
from hostile_inputs import one_line
from PIL import Image

from pictag.cli.main import main
from pictag.data.splits import read_splits
from pictag.errors import PictagError


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    for label in ("ok", "fine", os.fsdecode(b"caf\xe9")):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16)).save(root / label / f"{label}{i}_1.jpg")
    return root


def test_a_class_folder_that_is_not_utf8_is_left_out_and_reported(data, tmp_path, capsys):
    out = tmp_path / "splits.csv"
    assert main(["splits", str(data), "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "4 image(s) whose path is not UTF-8 left out (e.g. caf\\xe9/" in printed
    table = read_splits(out, root=data)
    assert sorted(set(table.classes)) == ["fine", "ok"] and len(table) == 8


def test_a_folder_as_out_is_one_line_even_with_overwrite(data, tmp_path, capsys):
    (tmp_path / "outdir").mkdir()
    assert main(["splits", str(data), "--out", str(tmp_path / "outdir"), "--overwrite"]) == 2
    assert "is a folder: name the CSV" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("ratios", ["nan,0.5,0.5", "0.5,nan,0.5", "inf,0,0", "1.5,-0.5", "0.5,0.5,nan"])
def test_ratios_that_are_not_fractions_are_one_line(data, tmp_path, capsys, ratios):
    assert main(["splits", str(data), "--out", str(tmp_path / "s.csv"), f"--ratios={ratios}"]) == 2
    assert "--ratios" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "s.csv").exists()


def test_a_damaged_or_special_splits_file_is_one_line(tmp_path):
    latin1, fifo = tmp_path / "latin1.csv", tmp_path / "fifo.csv"
    latin1.write_bytes(b"path,class,id,split\ncaf\xe9.jpg,a,1,train\n")
    os.mkfifo(fifo)  # nobody writes it: reading it must not wait
    with pytest.raises(PictagError, match="not a CSV that pictag splits wrote"):
        read_splits(latin1)
    with pytest.raises(PictagError, match="FIFO"):
        read_splits(fifo)
