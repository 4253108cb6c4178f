"""labelme-crops under hostile files and options: every bad file is skipped with one row in crops.errors.csv and the
good ones still cropped (exit 0); a bad option, or an OUT it must not touch, is one line and exit 2. Nothing is read
without a bound, nothing outside OUT is written or deleted, no crop overwrites another."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from hostile_inputs import one_line
from PIL import Image

from pictag.cli.main import main

SIZE = (64, 48)
BOX = [[8, 8], [40, 30]]


def labelme(folder: Path, stem: str | bytes, shapes=None, image_path: str | None = None, **keys) -> Path:
    """A labelme file with its image beside it (or `image_path` as given); `stem` may be bytes (any file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = os.fsdecode(stem)
    if image_path is None:
        image_path = "image.png"
        Image.new("RGB", SIZE, (200, 30, 30)).save(folder / image_path)
    doc = {"shapes": [{"label": "red", "points": BOX, "shape_type": "rectangle"}] if shapes is None else shapes,
           "imagePath": image_path, "imageWidth": SIZE[0], "imageHeight": SIZE[1], **keys}  # fmt: skip
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def crop(ann: Path, out: Path, *options: str) -> int:
    return main(["labelme-crops", str(ann), "--out", str(out), *options])


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def skipped_and_reported(tmp_path, capsys, make_bad) -> list[dict]:
    """Run a folder of one good file and the bad ones `make_bad(folder)` writes: exit 0, the good crop written,
    each bad one reported; returns the error rows."""
    ann, out = tmp_path / "ann", tmp_path / "out"
    labelme(ann, "good")
    make_bad(ann)
    assert crop(ann, out) == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    assert (out / "red" / "good_0.jpg").is_file()
    errors = rows(out / "crops.errors.csv")
    assert errors and all(e["reason"] for e in errors)
    return errors


# -- containment: --overwrite removes only what lies inside OUT ---------------------------------------------------


@pytest.mark.parametrize("listed", ["../victim.txt", "ABSOLUTE", "link/victim.txt"])
def test_overwrite_never_deletes_outside_out(tmp_path, capsys, listed):
    ann, out = tmp_path / "ann", tmp_path / "out"
    labelme(ann, "a")
    assert crop(ann, out) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if listed == "ABSOLUTE":
        listed = str(victim)
    if listed.startswith("link/"):
        (out / "link").symlink_to(tmp_path)
    with open(out / "crops.csv", "a", newline="") as f:
        csv.writer(f).writerow([listed, "red", "a.json", 0, "rectangle", 0, 0, 1, 1])
    capsys.readouterr()
    assert crop(ann, out, "--overwrite") == 2
    assert "outside" in one_line(capsys.readouterr().err)
    assert victim.read_text() == "keep me" and (out / "red" / "a_0.jpg").is_file()  # refused before any delete


def test_a_symlinked_label_folder_is_not_written_through(tmp_path, capsys):
    ann, out, elsewhere = tmp_path / "ann", tmp_path / "out", tmp_path / "elsewhere"
    labelme(ann, "a")
    elsewhere.mkdir()
    out.mkdir()
    (out / "crops.csv").write_text("crop\n")
    (out / "red").symlink_to(elsewhere)
    assert crop(ann, out, "--overwrite") == 2
    one_line(capsys.readouterr().err)
    assert not any(elsewhere.iterdir())


# -- collisions ---------------------------------------------------------------------------------------------------


def test_files_whose_paths_once_flattened_alike_keep_one_crop_each(tmp_path):
    ann, out = tmp_path / "ann", tmp_path / "out"
    labelme(ann / "sub", "a")
    labelme(ann, "sub__a")
    assert crop(ann, out) == 0
    listed = [r["crop"] for r in rows(out / "crops.csv")]
    assert len(listed) == len(set(listed)) == 2
    assert all((out / name).is_file() for name in listed)


def test_a_crop_is_never_written_over_another(tmp_path):
    from pictag.data.labelme import ShapeError, _save

    (tmp_path / "red").mkdir()
    (tmp_path / "red" / "a_0.jpg").write_bytes(b"first")
    with pytest.raises(ShapeError, match="would replace another crop"):
        _save(Image.new("RGB", (4, 4)), tmp_path, "red/a_0.jpg", 90)
    assert (tmp_path / "red" / "a_0.jpg").read_bytes() == b"first"


# -- bounded reads --------------------------------------------------------------------------------------------------


def test_a_json_that_is_a_device_a_fifo_or_a_folder_is_skipped_at_once(tmp_path, capsys):
    def bad(ann):
        (ann / "zero.json").symlink_to("/dev/zero")
        os.mkfifo(ann / "fifo.json")  # nobody writes it: a blocking read would wait forever
        (ann / "folder.json").mkdir()

    errors = skipped_and_reported(tmp_path, capsys, bad)
    reasons = {e["source"]: e["reason"] for e in errors}
    assert "character device" in reasons["zero.json"] and "FIFO" in reasons["fifo.json"]
    assert "directory" in reasons["folder.json"]


def test_an_image_path_naming_a_huge_file_or_a_device_is_not_read(tmp_path, capsys):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(3 * 2**30)  # sparse: 3 GB long, nothing on disk

    def bad(ann):
        labelme(ann, "huge", image_path=str(huge))
        labelme(ann, "zero", image_path="/dev/zero")

    reasons = {e["source"]: e["reason"] for e in skipped_and_reported(tmp_path, capsys, bad)}
    assert "byte limit" in reasons["huge.json"] and "character device" in reasons["zero.json"]


# -- one bad file never ends the run ---------------------------------------------------------------------------------


def test_hostile_documents_are_skipped_and_reported(tmp_path, capsys):
    def bad(ann):
        (ann / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        (ann / "digits.json").write_text('{"shapes": [], "imageWidth": ' + "9" * 5000 + "}")
        (ann / "latin1.json").write_bytes(b'{"shapes": [{"label": "caf\xe9"}]}')
        labelme(ann, "huge_float", [{"label": "red", "points": [[-1e308, -1e308], [1e308, 1e308]]}])
        (ann / "huge_int.json").write_text(
            json.dumps({"shapes": [{"label": "red", "points": [[0, 0], [1, 1]]}], "imagePath": "image.png"}).replace(
                "[1, 1]", "[" + "1" + "0" * 400 + ", 1]"
            )
        )
        labelme(ann, "long_label", [{"label": "x" * 300, "points": BOX, "shape_type": "rectangle"}])
        labelme(ann, "surrogate", [{"label": "\ud800", "points": BOX, "shape_type": "rectangle"}])
        labelme(ann, "x" * 250)
        labelme(ann, "long_image_path", image_path="y" * 5000 + ".png")
        labelme(ann, "nul_image_path", image_path="a\x00b.png")
        labelme(ann, "kind_list", [{"label": "red", "points": BOX, "shape_type": ["rectangle"]}])

    errors = skipped_and_reported(tmp_path, capsys, bad)
    sources = {e["source"] for e in errors}
    assert sources == {"deep.json", "digits.json", "latin1.json", "huge_float.json", "huge_int.json",
                       "long_label.json", "surrogate.json", "x" * 250 + ".json", "long_image_path.json",
                       "nul_image_path.json", "kind_list.json"}  # fmt: skip


def test_a_non_utf8_file_name_is_cropped_and_listed_as_text(tmp_path, capsys):
    ann, out = tmp_path / "ann", tmp_path / "out"
    labelme(ann, b"caf\xe9")
    assert crop(ann, out) == 0, capsys.readouterr().err
    (row,) = rows(out / "crops.csv")
    assert row["source"] == "caf\\xe9.json" and (out / row["crop"]).is_file()


@pytest.mark.parametrize("pad", ["nan", "inf", "-inf", "1e308", "-0.1"])
def test_a_pad_that_is_not_a_sane_fraction_is_one_line(tmp_path, capsys, pad):
    labelme(tmp_path / "ann", "a")
    assert crop(tmp_path / "ann", tmp_path / "out", f"--pad={pad}") == 2
    assert "--pad must be 0 to 100" in one_line(capsys.readouterr().err)
