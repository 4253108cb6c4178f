from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg_bytes, photos
from pictag.data.decode import DecodeError, decode_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_draft_mode_downscales_large_jpegs_but_keeps_the_needed_size():
    big = photos()["astronaut"].resize((1024, 1024))
    img = decode_image(jpeg_bytes(big), min_size=(224, 224))
    assert img.size == (256, 256)  # 1/4 scale: the largest reduction that stays >= 224
    assert decode_image(jpeg_bytes(big)).size == (1024, 1024)


def test_exif_orientation_is_applied():
    img = photos()["rocket"].resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    upright = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert upright.size == (80, 120)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    img = photos()["coffee"].resize((64, 48)).convert(mode if mode != "I;16" else "I").convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (64, 48)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"plain text, not pixels", "not an image"),
        (jpeg_bytes(Image.new("RGB", (300, 300)))[:200], "corrupt or truncated"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "not an image"),  # a PNG signature over a broken header
    ],
)
def test_bad_bytes_raise_decode_error_with_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _encode(Image.new("L", (6000, 6000)), "PNG")  # tiny file, 36 MP
    with pytest.raises(DecodeError, match="above the 1,000,000-pixel limit"):
        decode_image(bomb, max_pixels=1_000_000)


def test_decode_is_deterministic_and_full_resolution_without_min_size():
    data = jpeg_bytes(photos()["chelsea"])
    a, b = decode_image(data), decode_image(data)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == photos()["chelsea"].size
