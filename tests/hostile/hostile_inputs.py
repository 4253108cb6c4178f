"""Builders of hostile inputs, made in tmp_path: images a careless or hostile user would hand pictag.

Every builder returns bytes or writes files; nothing is shipped. Tests run them through the real CLI in-process
(`pictag.cli.main.main`), or in a subprocess where the exit code itself is the point.

A module rather than a conftest.py: a second conftest would shadow tests/conftest.py for `from conftest import`.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

from conftest import ROOT, jpeg_bytes, photos, subprocess_env

# Seconds any child process may take before the test fails instead of hanging CI.
CHILD_TIMEOUT = 120


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming `width` x `height` pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def thin_png(width: int, height: int) -> bytes:
    """A real, tiny PNG of an extreme aspect ratio (a 20000x1 one is about 100 bytes)."""
    return encode(Image.new("L", (width, height), 128), "PNG", optimize=True)


def photo(size: tuple[int, int] = (96, 72)) -> Image.Image:
    return photos()["coffee"].resize(size)


def every_mode() -> dict[str, bytes]:
    """The photo in every PIL mode, each in a format that stores it (TIFF stores nearly all of them)."""
    base = photo((48, 36))
    out = {}
    for mode, fmt in [
        ("1", "PNG"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("YCbCr", "TIFF"),
        ("LAB", "TIFF"),
        ("I", "TIFF"),
        ("F", "TIFF"),
        ("PA", "TIFF"),
        ("I;16B", "TIFF"),
        ("F", "PPM"),
    ]:
        img = base.convert("RGB" if mode in ("LAB", "PA") else "L" if mode in ("I", "F", "I;16", "I;16B") else mode)
        if mode in ("I", "F", "I;16", "I;16B"):
            img = img.convert("I").convert(mode) if mode != "F" else img.convert("F")
        elif mode == "LAB":
            img = img.convert("LAB")
        elif mode == "PA":
            img = img.convert("P").convert("PA")
        suffix = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "PPM": "ppm"}[fmt]
        out[f"mode-{mode.replace(';', '_')}.{suffix}"] = encode(img, fmt)
    return out


def animated() -> dict[str, bytes]:
    """Animated GIF, APNG and WebP, and a multi-page TIFF: only the first frame is used."""
    frames = [photo().rotate(angle) for angle in (0, 90, 180)]
    first, rest = frames[0], frames[1:]
    return {
        "anim.gif": encode(first, "GIF", save_all=True, append_images=rest, duration=50, loop=0),
        "anim.png": encode(first, "PNG", save_all=True, append_images=rest, duration=50),
        "anim.webp": encode(first, "WEBP", save_all=True, append_images=rest, duration=50),
        "pages.tif": encode(first, "TIFF", save_all=True, append_images=rest),
    }


def truncated() -> dict[str, bytes]:
    """Each format cut in half, and a JPEG cut after its header."""
    img = photo((160, 120))
    out = {
        f"half.{ext}": encode(img, fmt)[: len(encode(img, fmt)) // 2]
        for fmt, ext in [("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")]
    }
    out["half.jpg"] = jpeg_bytes(img)[:200]
    return out


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


def run_cli(*args: str, timeout: float = CHILD_TIMEOUT, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pictag ARGS` in a child process (for exit codes the parent cannot see: 134, kills)."""
    return subprocess.run(
        [sys.executable, "-m", "pictag", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or subprocess_env(),
        cwd=ROOT,
    )


def model_args(tiny_open_clip: tuple[str, Path]) -> list[str]:
    """CLI options naming the tiny random open_clip model of the `tiny_open_clip` fixture."""
    spec, checkpoint = tiny_open_clip
    return ["--model", spec, "--checkpoint", str(checkpoint), "--device", "cpu"]


def interrupt_after_commits(monkeypatch, commits: int = 1) -> None:
    """Make the next run stop like a Ctrl-C once `commits` units are committed (an interrupted run, in-process)."""
    from pictag.storage.parts import PartStore

    commit, done = PartStore.commit, []

    def commit_then_interrupt(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        done.append(1)
        if len(done) == commits:
            raise KeyboardInterrupt

    monkeypatch.setattr(PartStore, "commit", commit_then_interrupt)


def one_line(err: str) -> str:
    """The single line a refusal printed on stderr; fails if there is more, or a traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
