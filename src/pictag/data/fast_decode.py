"""`--decode fast`: JPEG bytes to a model's uint8 crop with libjpeg-turbo's scaled decoding and a SIMD resize.

The exact path (`decode_image` + `Preprocess.crop`) reproduces each library's reference transform to float
rounding, and so pays for a full-quality bicubic resize in PIL. The fast path keeps its geometry (the short side
resized to the same length, the same centre crop) but not its pixels:

- libjpeg-turbo decodes straight to the smallest M/8 scale (M = 1..8) that is still at least the resize target,
  where PIL's draft mode only knows 1/2, 1/4 and 1/8 (simplejpeg's `min_height`/`min_width`);
- OpenCV (SIMD) resizes the rest of the way: bilinear for the last < 8/7, INTER_AREA (pixel-area averaging) for
  images over 8x the target, bicubic where it enlarges.

Its effect on results is measured, not assumed (docs/cpu-inference.md, benchmarks/zero_shot_throughput.py part a).
Anything it does not handle (not a JPEG, CMYK, a corrupt file, a crop that needs padding) takes the exact path, which
then gives the usual error for bad input.
"""

from __future__ import annotations

import functools
import struct
from typing import Literal

import numpy as np

from pictag.data.decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, check_size, decode_image
from pictag.models.preprocess import Preprocess

Decode = Literal["exact", "fast"]
DECODES = ("exact", "fast")
_JPEG_MAGIC = b"\xff\xd8\xff"
# EXIF orientations that swap width and height (PIL's exif_transpose: 5 transpose, 6 rotate 270, 7 transverse,
# 8 rotate 90).
_TRANSPOSED = {5, 6, 7, 8}


def decode_crop(
    data: bytes | None,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    decode: Decode = "exact",
) -> np.ndarray:
    """The (height, width, 3) uint8 crop of encoded image bytes that `preprocess` describes.

    Args:
        data: The encoded image.
        preprocess: The model's eval preprocessing.
        max_pixels: Refuse images larger than this before decoding them (decompression bombs).
        max_aspect_ratio: Refuse images whose long side is more than this many times their short side.
        decode: "exact" reproduces the reference transform; "fast" takes `fast_crop` for JPEGs.

    Raises:
        DecodeError: empty, non-image, truncated, corrupt or oversized data.
    """
    if decode == "fast":
        crop = fast_crop(data, preprocess, max_pixels, max_aspect_ratio)
        if crop is not None:
            return crop
    return preprocess.crop(decode_image(data, preprocess.min_decode_size, max_pixels, max_aspect_ratio))


def fast_crop(
    data: bytes | None,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> np.ndarray | None:
    """The crop of a JPEG by scaled decoding and a SIMD resize, or None where the exact path must decide.

    Raises:
        DecodeError: a JPEG above a size limit (`pictag.data.decode.check_size`, the check every path shares).
    """
    if not data or not data.startswith(_JPEG_MAGIC):
        return None
    simplejpeg, cv2 = _libraries()
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    check_size(width, height, max_pixels, max_aspect_ratio)
    if colorspace not in ("Gray", "YCbCr", "RGB"):  # CMYK/YCCK: PIL's conversion is the reference
        return None
    orientation = exif_orientation(data)
    upright_w, upright_h = (height, width) if orientation in _TRANSPOSED else (width, height)
    new_h, new_w = resized_size(preprocess, upright_h, upright_w)
    out_h, out_w = preprocess.size
    if new_h < out_h or new_w < out_w:
        return None  # the crop would need padding: rare, and the exact path pads as the reference does
    stored_h, stored_w = (new_w, new_h) if orientation in _TRANSPOSED else (new_h, new_w)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=stored_h, min_width=stored_w)
    except ValueError:
        return None
    if pixels.shape[:2] != (stored_h, stored_w):
        pixels = cv2.resize(pixels, (stored_w, stored_h), interpolation=_interpolation(cv2, pixels.shape[0] / stored_h))
    pixels = _upright(pixels, orientation)
    top, left = crop_offsets(preprocess, new_h, new_w)
    return np.ascontiguousarray(pixels[top : top + out_h, left : left + out_w])


def _interpolation(cv2, shrink: float) -> int:
    # After an M/8 decode at least as large as the target, what is left to shrink is less than 8/7 unless the image
    # is over 8x the target: bilinear then, twice as fast as area averaging and with nothing to alias; area
    # averaging for larger factors; bicubic to enlarge, as the reference does.
    if shrink >= 2:
        return cv2.INTER_AREA
    return cv2.INTER_LINEAR if shrink >= 1 else cv2.INTER_CUBIC


def resized_size(preprocess: Preprocess, height: int, width: int) -> tuple[int, int]:
    """(height, width) an upright image has after `preprocess`'s resize, by the same rule as its exact path."""
    if not isinstance(preprocess.resize, int):
        return preprocess.resize
    # torchvision's rule, which open_clip, timm and transformers share: the short side becomes `resize`, the long
    # side is truncated.
    if width <= height:
        return int(preprocess.resize * height / width), preprocess.resize
    return preprocess.resize, int(preprocess.resize * width / height)


def crop_offsets(preprocess: Preprocess, height: int, width: int) -> tuple[int, int]:
    """(top, left) of the centre crop, rounded as the backend's reference rounds it."""
    out_h, out_w = preprocess.size
    if preprocess.backend == "pil":
        return int(round((height - out_h) / 2.0)), int(round((width - out_w) / 2.0))
    return int((height - out_h) / 2.0), int((width - out_w) / 2.0)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG bytes, 1 when absent; reads the markers before the image data only."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker == 0xDA:  # start of scan: no EXIF past here
            break
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            return _tiff_orientation(segment[6:])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    try:
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, kind = struct.unpack(endian + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:  # Orientation, a SHORT
                (value,) = struct.unpack(endian + "H", entry[8:10])
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    # The numpy equivalents of PIL's exif_transpose, on (H, W, 3) arrays; views, copied once by the crop.
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return np.rot90(pixels, 2).transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


@functools.cache
def _libraries():
    """(simplejpeg, cv2), imported on first use: the `fast-decode` extra."""
    try:
        import cv2
        import simplejpeg
    except ImportError as exc:
        from pictag.errors import PictagError

        raise PictagError(
            f"--decode fast needs simplejpeg and OpenCV ({exc.name} is missing): pip install 'pictag[fast-decode]'"
        ) from None
    # Decoding workers are the parallelism: one OpenCV thread each, as torch runs one thread in each worker.
    cv2.setNumThreads(1)
    return simplejpeg, cv2
