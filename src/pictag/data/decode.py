"""Bytes to RGB pixels: fast, and fault-tolerant enough to run over millions of untrusted images.

JPEGs are decoded with PIL's draft mode, which lets libjpeg downscale in the DCT domain by 1/2, 1/4 or 1/8 while
the result stays at least as large as the model needs; that skips most of the decode work on large photos.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from pictag.data.limits import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS

# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


class DecodeError(Exception):
    """One record could not become an image; the message is the reason written to the errors file."""


class ImageTooLarge(DecodeError):
    """The image was refused by a size limit before any pixel was decoded.

    Attributes:
        limit: Which limit applied: "max_pixels" or "max_aspect_ratio" (serving answers 413 for both).
    """

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


def check_size(
    width: int,
    height: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> None:
    """Refuse an image, from the size in its header, whose decoding or resizing would cost too much.

    The one check of image sizes: batch jobs run it in `decode_image`, serving on the uploaded bytes' header, so
    an image passes or fails the same way everywhere.

    Args:
        width: Width in pixels, as the header says.
        height: Height in pixels.
        max_pixels: Most pixels to decode (decompression bombs: a 100 KB PNG can hold 1 GP).
        max_aspect_ratio: Largest ratio of the long side to the short one (the resize to the model's size
            multiplies the long side by the short side's factor).

    Raises:
        ImageTooLarge: The size is above a limit; the message names the limit.
        DecodeError: The size has no pixels.
    """
    if width < 1 or height < 1:
        raise DecodeError(f"image is {width}x{height}: it has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height}, above the {max_pixels:,}-pixel limit (max_pixels)", "max_pixels"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        shown = f"{ratio:,.1f}".removesuffix(".0")
        raise ImageTooLarge(
            f"image is {width}x{height}, aspect ratio {shown}:1 above the {max_aspect_ratio:g}:1 limit "
            "(max_aspect_ratio): resizing it to the model's size would take too much memory",
            "max_aspect_ratio",
        )


def decode_image(
    data: bytes | None,
    min_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
):
    """Decode encoded image bytes into an upright RGB PIL image.

    Only the first frame of an animated or multi-page image is decoded.

    Args:
        data: The encoded image (JPEG, PNG, WebP, ...).
        min_size: (width, height) the upright image must keep at least; lets JPEG decoding downscale in the DCT
            domain. None decodes at full size.
        max_pixels: Refuse images larger than this before decoding them (decompression bombs).
        max_aspect_ratio: Refuse images longer than this many times their width (or wider than their height),
            whose resize would explode; see `check_size`.

    Raises:
        DecodeError: empty, non-image, truncated or corrupt data; `ImageTooLarge` for a size above a limit.
    """
    if not data:
        raise DecodeError("empty record (0 bytes)")
    try:
        with warnings.catch_warnings():
            # `check_size` is the limit, named in its message; PIL's own warning (at 89 MP) would refuse images
            # below `max_pixels` under another name. Its error (at 179 MP) stays as a backstop.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            check_size(*img.size, max_pixels, max_aspect_ratio)
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
    except Image.DecompressionBombError:
        # PIL refuses sizes above twice its Image.MAX_IMAGE_PIXELS while reading the header, before `check_size`.
        pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels < pil_limit:
            raise ImageTooLarge(f"image is above the {max_pixels:,}-pixel limit (max_pixels)", "max_pixels") from None
        raise ImageTooLarge(
            f"image is above PIL's {pil_limit:,}-pixel limit (twice PIL.Image.MAX_IMAGE_PIXELS), which caps max_pixels",
            "max_pixels",
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DecodeError(f"corrupt or truncated image: {reason}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    # Plain conversion, alpha dropped, as open_clip and torchvision do, so preprocessing matches their reference.
    return img if img.mode == "RGB" else img.convert("RGB")
