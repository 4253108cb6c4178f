"""Hostile images: extreme aspect ratios, bombs, truncated files, every PIL mode, animations, pages, SVG.

Each is an error row (exit 0) or an image, never a traceback; size refusals name the limit that applied.
"""

from __future__ import annotations

import pyarrow.csv as pacsv
import pytest
from hostile_inputs import SVG, animated, every_mode, model_args, png_claiming, thin_png, truncated
from PIL import Image

from pictag.cli.main import main
from pictag.data.decode import (
    DEFAULT_MAX_ASPECT_RATIO,
    DecodeError,
    ImageTooLarge,
    check_size,
    decode_image,
)


@pytest.mark.parametrize(
    "size, limit",
    [
        ((20000, 1), "max_aspect_ratio"),
        ((1, 20000), "max_aspect_ratio"),
        ((10000, 1), "max_aspect_ratio"),
        ((5100, 100), "max_aspect_ratio"),
        ((20000, 20000), "max_pixels"),
    ],
)
def test_sizes_above_a_limit_are_refused_naming_it(size, limit):
    with pytest.raises(ImageTooLarge, match=limit) as refused:
        check_size(*size, max_pixels=100_000_000)
    assert refused.value.limit == limit


def test_a_size_without_pixels_is_a_decode_error():
    with pytest.raises(DecodeError, match="no pixels"):
        check_size(0, 10)


@pytest.mark.parametrize("size", [(50, 1), (1, 50), (224, 224), (7000, 5000), (10000, 200)])
def test_sizes_within_the_limits_pass(size):
    check_size(*size)


def test_thin_images_are_refused_from_their_header_in_milliseconds():
    for width, height in [(20000, 1), (10000, 1), (1, 20000)]:
        with pytest.raises(ImageTooLarge, match=r"aspect ratio [\d,]+:1 above the 50:1 limit"):
            decode_image(thin_png(width, height), min_size=(224, 224))
    # A 50:1 image is at the limit: decoded (and its resize stays small).
    assert decode_image(thin_png(int(DEFAULT_MAX_ASPECT_RATIO), 1)).size == (50, 1)


def test_a_header_claiming_ten_gigapixels_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge) as refused:
        decode_image(png_claiming(100_000, 100_000))
    assert refused.value.limit == "max_pixels"
    with pytest.raises(ImageTooLarge, match="max_pixels"):
        decode_image(png_claiming(6000, 6000), max_pixels=1_000_000)


@pytest.mark.parametrize("name, data", sorted({**every_mode(), **animated()}.items()))
def test_every_mode_and_animated_or_paged_image_decodes_to_its_first_frame_in_rgb(name, data):
    img = decode_image(data, min_size=(224, 224))
    assert img.mode == "RGB" and img.size in ((48, 36), (96, 72))


@pytest.mark.parametrize("name, data", sorted({**truncated(), "vector.png": SVG}.items()))
def test_truncated_files_and_svg_are_decode_errors(name, data):
    with pytest.raises(DecodeError):
        decode_image(data)


def test_classify_over_every_hostile_image_writes_rows_and_error_rows(tmp_path, tiny_open_clip, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = {**every_mode(), **animated()}
    bad = {
        **truncated(),
        "thin-20000x1.png": thin_png(20000, 1),
        "thin-10000x1.png": thin_png(10000, 1),
        "tall-1x20000.png": thin_png(1, 20000),
        "bomb.png": png_claiming(100_000, 100_000),
        "vector.png": SVG,
    }
    for name, data in {**good, **bad}.items():
        (folder / name).write_bytes(data)
    (folder / "drawing.svg").write_bytes(SVG)  # not an image extension: not listed at all
    out = tmp_path / "out.csv"
    code = main(["classify", str(folder), "--labels", "cat,dog", "--out", str(out), "--workers", "0",
                 *model_args(tiny_open_clip)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(pacsv.read_csv(out).column("key").to_pylist()) == sorted(good)
    errors = dict(zip(*pacsv.read_csv(tmp_path / "out.errors.csv").to_pydict().values()))
    assert sorted(errors) == sorted(bad)
    assert all("max_aspect_ratio" in errors[k] for k in bad if k.startswith(("thin", "tall")))
    assert "max_pixels" in errors["bomb.png"]
    assert "Traceback" not in capsys.readouterr().err


def test_max_aspect_ratio_is_an_option_and_its_bound_is_checked(tmp_path, tiny_open_clip, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "banner.png").write_bytes(thin_png(600, 10))  # 60:1
    Image.new("RGB", (64, 48)).save(folder / "ok.png")
    args = ["classify", str(folder), "--labels", "a,b", "--workers", "0", *model_args(tiny_open_clip)]
    assert main([*args, "--out", str(tmp_path / "a.csv")]) == 0
    assert pacsv.read_csv(tmp_path / "a.errors.csv").num_rows == 1
    assert main([*args, "--out", str(tmp_path / "b.csv"), "--max-aspect-ratio", "100"]) == 0
    assert pacsv.read_csv(tmp_path / "b.csv").num_rows == 2
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c.csv"), "--max-aspect-ratio", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-aspect-ratio must be at least 1" in err
