"""Bytes to RGB pixels: fast, and fault-tolerant enough to run over millions of untrusted images.

JPEGs are decoded with PIL's draft mode, which lets libjpeg downscale in the DCT domain by 1/2, 1/4 or 1/8 while
the result stays at least as large as the model needs; that skips most of the decode work on large photos.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


class DecodeError(Exception):
    """One record could not become an image; the message is the reason written to the errors file."""


def decode_image(data: bytes | None, min_size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode encoded image bytes into an upright RGB PIL image.

    Args:
        data: The encoded image (JPEG, PNG, WebP, ...).
        min_size: (width, height) the upright image must keep at least; lets JPEG decoding downscale in the DCT
            domain. None decodes at full size.
        max_pixels: Refuse images larger than this before decoding them (decompression bombs).

    Raises:
        DecodeError: empty, non-image, truncated, corrupt or oversized data.
    """
    if not data:
        raise DecodeError("empty record (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise DecodeError(f"image is {width}x{height}, above the {max_pixels:,}-pixel limit")
            orientation = img.getexif().get(0x0112, 1)
            if min_size is not None and img.format == "JPEG":
                w, h = min_size
                img.draft("RGB", (h, w) if orientation in _TRANSPOSED else (w, h))
            img.load()
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise DecodeError(f"decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DecodeError(f"corrupt or truncated image: {reason}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    # Plain conversion, alpha dropped, as open_clip and torchvision do, so preprocessing matches their reference.
    return img if img.mode == "RGB" else img.convert("RGB")
