"""`pictag labelme-crops` on labelme / X-AnyLabeling files generated here: every shape kind, every image source,
and every kind of bad input (reported and skipped, never fatal)."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pictag.cli.main import main
from pictag.data import open_source
from pictag.data.labelme import crop_labelme, folder_name
from pictag.errors import PictagError

WIDTH, HEIGHT = 120, 80


def scene() -> Image.Image:
    """White, with a red block at x 10-40, y 10-30 and a blue block at x 60-100, y 40-70."""
    pixels = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    pixels[10:30, 10:40] = (255, 0, 0)
    pixels[40:70, 60:100] = (0, 0, 255)
    return Image.fromarray(pixels)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def shape(label, points, shape_type="rectangle", **extra) -> dict:
    return {"label": label, "points": points, "shape_type": shape_type, "group_id": None, "flags": {}, **extra}


def write_labelme(folder: Path, stem: str, shapes: list, *, image=None, image_path="same", image_data=None, **keys):
    """A labelme 5.x-style file (image_path "same" saves `image` as <stem>.png beside it); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    if image_path == "same":
        image_path = f"{stem}.png"
        (image or scene()).save(folder / image_path)
    doc = {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": HEIGHT,
        "imageWidth": WIDTH,
        **keys,
    }
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(doc))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mean_rgb(path: Path) -> tuple[float, ...]:
    return tuple(np.asarray(Image.open(path).convert("RGB"), np.float32).reshape(-1, 3).mean(0).round())


def test_every_shape_kind(tmp_path):
    shapes = [
        shape("red", [[10, 10], [40, 30]]),  # labelme rectangle: 2 corners
        shape("blue", [[100, 70], [60, 70], [60, 40], [100, 40]], score=0.9, difficult=False, attributes={}),
        shape("blue", [[60, 40], [100, 40], [100, 70], [60, 70]], "rotation", direction=0.0, kie_linking=[]),
        shape("red", [[25, 20], [40, 20]], "circle"),  # centre and a rim point: radius 15
        {"label": "red", "points": [[10, 10], [40, 10], [40, 30]], "line_color": None},  # labelme 3.x: no shape_type
        shape("blue", [[60, 40], [100, 70]], "mask", mask="iVBORw0KGgo="),  # labelme 5: the mask's box corners
        shape("red", [[5, 5]], "point"),
        shape("red", [[5, 5], [9, 9]], "line"),
        shape("red", [[5, 5], [9, 9], [20, 5]], "linestrip"),
        shape("red", [[5, 5], [9, 9]], "points"),
    ]
    write_labelme(tmp_path / "ann", "scene", shapes, description="")
    result = crop_labelme(tmp_path / "ann", tmp_path / "out")

    assert result.per_label == {"blue": 3, "red": 3}
    assert result.skipped == {"line": 1, "linestrip": 1, "point": 1, "points": 1}
    assert result.errors == 0
    rows = read_csv(result.crops_csv)
    boxes = {int(r["shape"]): (r["shape_type"], tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))) for r in rows}
    assert boxes == {
        0: ("rectangle", (10, 10, 40, 30)),
        1: ("rectangle", (60, 40, 100, 70)),
        2: ("rotation", (60, 40, 100, 70)),
        3: ("circle", (10, 5, 40, 35)),
        4: ("polygon", (10, 10, 40, 30)),
        5: ("mask", (60, 40, 100, 70)),
    }
    assert [r["crop"] for r in rows] == [
        "red/scene_0.jpg",
        "blue/scene_1.jpg",
        "blue/scene_2.jpg",
        "red/scene_3.jpg",
        "red/scene_4.jpg",
        "blue/scene_5.jpg",
    ]
    assert Image.open(tmp_path / "out/red/scene_0.jpg").size == (30, 20)
    assert mean_rgb(tmp_path / "out/red/scene_0.jpg") == pytest.approx((255, 0, 0), abs=6)
    assert mean_rgb(tmp_path / "out/blue/scene_1.jpg") == pytest.approx((0, 0, 255), abs=6)
    # The output is a folder of classes: the CSVs beside the class folders are not read as images.
    source = open_source(tmp_path / "out", labelled=True)
    assert source.classes == ("blue", "red") and len(source) == 6


def test_mask_blanks_the_outside_of_polygons_and_circles(tmp_path):
    white = Image.new("RGB", (WIDTH, HEIGHT), "white")
    shapes = [shape("tri", [[0, 0], [60, 0], [0, 60]], "polygon"), shape("disc", [[60, 40], [90, 40]], "circle")]
    write_labelme(tmp_path / "ann", "w", shapes, image=white)
    crop_labelme(tmp_path / "ann", tmp_path / "plain")
    crop_labelme(tmp_path / "ann", tmp_path / "masked", mask=True)
    for name, inside, outside in (("tri/w_0.jpg", (5, 5), (55, 55)), ("disc/w_1.jpg", (30, 30), (1, 1))):
        plain = Image.open(tmp_path / "plain" / name)
        masked = Image.open(tmp_path / "masked" / name)
        assert min(masked.getpixel(inside)) > 240 and min(plain.getpixel(outside)) > 240
        assert max(masked.getpixel(outside)) < 15


def test_image_from_path_data_or_beside_the_json(tmp_path):
    ann = tmp_path / "ann"
    data = base64.b64encode(png_bytes(scene())).decode()
    red = [shape("red", [[10, 10], [40, 30]])]
    write_labelme(ann, "embedded", red, image_path=None, image_data=data)  # imageData only
    write_labelme(ann, "wrong_path", red, image_path="../elsewhere/gone.png", image_data=data)
    write_labelme(ann, "windows", red, image_path="..\\images\\windows.png")  # not there, but beside the JSON
    scene().save(ann / "windows.png")
    write_labelme(ann, "other_size", red, image_path="small.png", image_data=data)  # a wrong image: use imageData
    Image.new("RGB", (10, 10)).save(ann / "small.png")
    write_labelme(ann, "missing", red, image_path="gone.png")  # and no imageData
    write_labelme(ann, "no_area_shapes", [shape("red", [[1, 1]], "point")], image_path="gone.png")  # needs no image

    result = crop_labelme(ann, tmp_path / "out")

    assert result.per_label == {"red": 4}
    for stem in ("embedded", "wrong_path", "windows", "other_size"):
        assert mean_rgb(tmp_path / f"out/red/{stem}_0.jpg") == pytest.approx((255, 0, 0), abs=6)
    (error,) = read_csv(result.errors_csv)
    assert error["source"] == "missing.json" and error["shape"] == ""
    assert error["reason"].startswith("image not found:") and "no imageData" in error["reason"]


def test_exif_orientation_is_applied(tmp_path):
    upright = scene()
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90° counter-clockwise: viewers turn it clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", quality=95, exif=exif)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann/turned.jpg").write_bytes(buf.getvalue())
    write_labelme(tmp_path / "ann", "turned", [shape("blue", [[60, 40], [100, 70]])], image_path="turned.jpg")

    result = crop_labelme(tmp_path / "ann", tmp_path / "out")

    assert result.per_label == {"blue": 1}, read_csv(result.errors_csv)
    assert mean_rgb(tmp_path / "out/blue/turned_0.jpg") == pytest.approx((0, 0, 255), abs=8)


def test_bad_files_and_shapes_are_reported_and_skipped(tmp_path):
    ann = tmp_path / "ann"
    write_labelme(ann, "good", [shape("red", [[10, 10], [40, 30]])])
    (ann / "broken.json").write_text('{"shapes": [')
    (ann / "list.json").write_text("[1, 2]")
    write_labelme(
        ann,
        "shapes",
        [
            shape("red", [[200, 200], [300, 300]]),  # wholly outside the 120x80 image
            shape("red", [[110, 70], [200, 200]]),  # partly outside: clipped
            shape("", [[10, 10], [40, 30]]),
            shape("red", [[10, 10], [10, 30]]),  # no width
            shape("red", [[10, 10], ["a", 30]]),
            shape("red", [[10, 10], [40, 30]], "cuboid"),
        ],
    )
    result = crop_labelme(ann, tmp_path / "out")

    assert result.per_label == {"red": 2} and result.errors == 7
    reasons = {(e["source"], e["shape"]): e["reason"] for e in read_csv(result.errors_csv)}
    assert reasons[("broken.json", "")].startswith("not valid JSON")
    assert reasons[("list.json", "")] == "not a labelme file: no list of shapes"
    assert reasons[("shapes.json", "0")] == "box 200,200,300,300 lies outside the 120x80 image"
    assert reasons[("shapes.json", "2")] == "shape has no label"
    assert "no area" in reasons[("shapes.json", "3")]
    assert "pairs of numbers" in reasons[("shapes.json", "4")]
    assert "cuboid" in reasons[("shapes.json", "5")]
    clipped = next(r for r in read_csv(result.crops_csv) if r["crop"] == "red/shapes_1.jpg")
    assert [int(clipped[k]) for k in ("x0", "y0", "x1", "y1")] == [110, 70, WIDTH, HEIGHT]


def test_pad_min_size_labels_and_label_map(tmp_path):
    shapes = [
        shape("Red", [[10, 10], [40, 30]]),
        shape("blue", [[60, 40], [100, 70]]),
        shape("tiny", [[0, 0], [4, 4]]),
        shape("aple", [[50, 0], [60, 20]]),
    ]
    write_labelme(tmp_path / "ann", "s", shapes)
    result = crop_labelme(
        tmp_path / "ann",
        tmp_path / "out",
        pad=0.5,
        min_size=8,
        labels="red,blue,tiny",
        label_map="Red=red, aple=apple",
    )
    assert result.per_label == {"blue": 1, "red": 1}
    assert result.skipped == {"below --min-size": 1, "not in --labels": 1}
    rows = {r["label"]: [int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in read_csv(result.crops_csv)}
    assert rows == {"red": [0, 0, 55, 40], "blue": [40, 25, 120, 80]}  # half the box on each side, clipped
    with pytest.raises(PictagError, match="old=new"):
        crop_labelme(tmp_path / "ann", tmp_path / "out2", label_map="red")


def test_labels_never_leave_the_output_folder(tmp_path):
    labels = ["../x", "a/b", "a%2Fb", ".", "..", ".hidden", "c:\\d", "ok ü"]
    shapes = [shape(label, [[10, 10], [40, 30]]) for label in labels]
    write_labelme(tmp_path / "ann", "s", shapes)
    out = tmp_path / "deep" / "out"
    result = crop_labelme(tmp_path / "ann", out)

    assert result.per_label == {label: 1 for label in sorted(labels)}
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == len(labels) and sorted(folder_name(label) for label in labels) == folders
    assert all(p.resolve().parent == out.resolve() for p in out.iterdir())
    assert list(tmp_path.glob("deep/*")) == [out] and not (tmp_path / "x").exists()
    assert open_source(out, labelled=True).classes == tuple(folders)
    assert {r["label"] for r in read_csv(result.crops_csv)} == set(labels)


def test_cli_reports_overwrites_and_stays_deterministic(tmp_path, capsys):
    ann, out = tmp_path / "ann", tmp_path / "out"
    assert main(["labelme-crops", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not exist" in err

    write_labelme(ann, "missing", [shape("red", [[10, 10], [40, 30]])], image_path="gone.png")
    assert main(["labelme-crops", str(ann), "--out", str(out)]) == 0  # only a missing image: reported, exit 0
    assert "1 errors" in capsys.readouterr().out

    write_labelme(ann, "b", [shape("red", [[10, 10], [40, 30]]), shape("blue", [[60, 40], [100, 70]])])
    write_labelme(ann / "sub", "b", [shape("red", [[10, 10], [40, 30]])])
    assert main(["labelme-crops", str(ann), "--out", str(out)]) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main(["labelme-crops", str(ann), "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "3 crops of 2 labels from 3 files" in printed and "  red    2" in printed
    first = (out / "crops.csv").read_bytes()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "blue/b_1.jpg",
        "red/b_0.jpg",
        "red/sub%2Fb_0.jpg",
    ]
    assert main(["labelme-crops", str(ann), "--out", str(out), "--overwrite", "--labels", "blue"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["blue/b_1.jpg"]
    assert main(["labelme-crops", str(ann), "--out", str(out), "--overwrite"]) == 0
    assert (out / "crops.csv").read_bytes() == first

    (out / "mine.txt").write_text("not a crop")
    assert main(["labelme-crops", str(ann), "--out", str(out), "--overwrite"]) == 2
    assert "mine.txt" in capsys.readouterr().err and (out / "mine.txt").exists()
    assert (out / "crops.csv").read_bytes() == first  # refused before anything was removed
