"""`--decode fast`: scaled JPEG decoding and an OpenCV resize, close to the exact crop, exact path for the rest.

What is asserted is pixel-level closeness of the crops to the exact path's (same geometry, mean difference of a
few levels out of 255) on scikit-image's real photos; the effect on a real classifier's top-1 is measured on the
shared photos by benchmarks/zero_shot_throughput.py and written in docs/cpu-inference.md.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pictag.data import open_source
from pictag.data.crops import Decoder
from pictag.data.decode import DecodeError
from pictag.data.fast_decode import decode_crop, exif_orientation, fast_crop
from pictag.models.preprocess import Preprocess
from pictag.pipeline.plan import plan_units
from pictag.pipeline.runner import crop_batches

pytest.importorskip("simplejpeg", reason="the fast-decode extra is not installed")
pytest.importorskip("cv2", reason="the fast-decode extra is not installed")

OPEN_CLIP = Preprocess((224, 224), 224, "bicubic", (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
TRANSFORMERS = Preprocess((224, 224), 224, "bicubic", (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), backend="tensor")


def _jpeg(img: Image.Image, orientation: int = 1, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _scaled(img: Image.Image, short: int) -> Image.Image:
    scale = short / min(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    import skimage.data

    return {
        name: Image.fromarray(getattr(skimage.data, name)()) for name in ["astronaut", "chelsea", "coffee", "rocket"]
    }


@pytest.mark.parametrize(
    ("preprocess", "short"),
    [(OPEN_CLIP, 180), (OPEN_CLIP, 300), (OPEN_CLIP, 700), (OPEN_CLIP, 1200), (TRANSFORMERS, 500)],
    ids=["enlarged", "no-dct-scaling-in-pil", "dct-scaled", "over-4x", "transformers-geometry"],
)
def test_fast_crops_are_close_to_exact_on_real_photos(photos, preprocess, short):
    for name, img in photos.items():
        data = _jpeg(_scaled(img, short))
        exact = decode_crop(data, preprocess).astype(np.int16)
        fast = fast_crop(data, preprocess)
        assert fast is not None and fast.shape == exact.shape == (224, 224, 3) and fast.dtype == np.uint8
        diff = np.abs(fast - exact)
        # Same geometry (a crop shifted by one pixel differs by ~10 levels on average on these photos).
        assert diff.mean() < 4.0, (name, short, diff.mean())
        assert np.percentile(diff, 99) < 40, (name, short)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_the_exact_path(photos, orientation):
    data = _jpeg(_scaled(photos["rocket"], 300), orientation)
    assert exif_orientation(data) == orientation
    diff = np.abs(fast_crop(data, OPEN_CLIP).astype(np.int16) - decode_crop(data, OPEN_CLIP))
    assert diff.mean() < 4.0


def test_everything_else_takes_the_exact_path(photos):
    img = _scaled(photos["coffee"], 300)
    png, cmyk = io.BytesIO(), io.BytesIO()
    img.save(png, format="PNG")
    img.convert("CMYK").save(cmyk, format="JPEG")
    for data in (png.getvalue(), cmyk.getvalue(), b"", None, b"\xff\xd8\xff\xe0 not really a jpeg"):
        assert fast_crop(data, OPEN_CLIP) is None
    for data in (png.getvalue(), cmyk.getvalue()):
        np.testing.assert_array_equal(decode_crop(data, OPEN_CLIP, decode="fast"), decode_crop(data, OPEN_CLIP))
    # Bad input gets the exact path's one-line reasons.
    with pytest.raises(DecodeError, match="corrupt or truncated|not an image"):
        decode_crop(b"\xff\xd8\xff\xe0 not really a jpeg", OPEN_CLIP, decode="fast")
    with pytest.raises(DecodeError, match="empty"):
        decode_crop(b"", OPEN_CLIP, decode="fast")
    truncated = _jpeg(img)[:2000]
    try:
        expected = decode_crop(truncated, OPEN_CLIP)
    except DecodeError as exc:
        with pytest.raises(DecodeError, match=str(exc)[:20]):
            decode_crop(truncated, OPEN_CLIP, decode="fast")
    else:
        assert decode_crop(truncated, OPEN_CLIP, decode="fast").shape == expected.shape


def test_size_limits_are_the_exact_paths_and_checked_before_decoding():
    data = _jpeg(Image.new("RGB", (400, 300)))
    with pytest.raises(DecodeError, match="above the 100,000-pixel limit"):
        fast_crop(data, OPEN_CLIP, max_pixels=100_000)
    with pytest.raises(DecodeError, match="aspect ratio 4:1 above the 3:1 limit"):
        decode_crop(_jpeg(Image.new("RGB", (800, 200))), OPEN_CLIP, max_aspect_ratio=3, decode="fast")


def test_the_runner_crops_fast_and_reports_bad_records(photos, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(_jpeg(_scaled(photos["chelsea"], 500)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff nope")
    units = plan_units(open_source(str(tmp_path)))
    batches = {d: list(crop_batches(units, Decoder(OPEN_CLIP, decode=d), batch_size=8)) for d in ("exact", "fast")}
    for batch in batches.values():
        assert batch[0].keys == ["cat.jpg"] and [key for key, _ in batch[0].errors] == ["broken.jpg"]
    diff = np.abs(batches["fast"][0].crops.numpy().astype(np.int16) - batches["exact"][0].crops.numpy())
    assert 0 < diff.mean() < 4.0
