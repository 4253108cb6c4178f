"""Generated few-shot data for tests: coloured-shape images whose class a tiny random CNN can still tell apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def shape_image(colour: str, seed: int, size: int = 96) -> Image.Image:
    """A noisy background with a filled square of the class colour at a random place."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    side = int(rng.integers(size // 3, size // 2))
    top, left = (int(v) for v in rng.integers(0, size - side, 2))
    pixels[top : top + side, left : left + side] = COLOURS[colour]
    return Image.fromarray(pixels)


def write_class_folders(root: Path, per_class: int, classes=tuple(COLOURS), seed: int = 0) -> Path:
    """root/<class>/<i>.jpg for every class."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(name, seed + 1000 * c + i).save(root / name / f"{i}.jpg", quality=92)
    return root


def write_task(root: Path, shots: int, queries: int, classes=tuple(COLOURS), seed: int = 0) -> dict[str, str]:
    """root/support/<class>/*.jpg and root/query/*.jpg; returns the true class of each query image."""
    truth = {}
    for c, name in enumerate(classes):
        (root / "support" / name).mkdir(parents=True, exist_ok=True)
        for i in range(shots):
            shape_image(name, seed + 1000 * c + i).save(root / "support" / name / f"{i}.jpg", quality=92)
        (root / "query").mkdir(parents=True, exist_ok=True)
        for i in range(queries):
            image = f"{name[0]}{i}.jpg"
            shape_image(name, seed + 1000 * c + 500 + i).save(root / "query" / image, quality=92)
            truth[image] = name
    return truth
