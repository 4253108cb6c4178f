"""Generated metric-learning data for tests: classes of objects, each object (ID) photographed in several views,
named `{ID}_{seq}.jpg` in class folders, and the splits CSV `pictag splits` would write for them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (220, 200, 40), (200, 40, 200), (40, 200, 200)]


def view(colour: tuple[int, int, int], object_seed: int, view_seed: int, size: int = 64) -> Image.Image:
    """One view of one object: a square of the class colour (with the object's own tint and size) at a random
    place on a background of a random colour. The background covers most of the image, so a random network's
    features follow it; training has to learn that the square is what counts."""
    obj = np.random.default_rng(object_seed)
    tint = obj.integers(-20, 21, 3)
    side = int(obj.integers(size // 2, 2 * size // 3))
    rng = np.random.default_rng(view_seed)
    background = rng.integers(0, 140, 3)
    pixels = np.clip(background + rng.integers(-30, 31, (size, size, 3)), 0, 255).astype(np.uint8)
    top, left = (int(v) for v in rng.integers(0, size - side, 2))
    pixels[top : top + side, left : left + side] = np.clip(np.array(colour) + tint, 0, 255)
    return Image.fromarray(pixels)


def write_objects(root: Path, classes: int = 6, ids: int = 4, views: int = 4, seed: int = 0) -> Path:
    """root/c<k>/<ID>_<seq>.jpg: `ids` objects of each class, `views` views of each object."""
    for c in range(classes):
        folder = root / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(ids):
            object_id = f"c{c}o{i}"
            for v in range(views):
                image = view(PALETTE[c % len(PALETTE)], seed + 100 * c + i, seed + 10_000 + 1000 * c + 10 * i + v)
                image.save(folder / f"{object_id}_{v}.jpg", quality=92)
    return root


def write_splits(root: Path, out: Path, val_ids: tuple[int, ...] = (0,), val_classes: tuple[str, ...] = ()) -> Path:
    """A splits CSV (path,class,id,split) of `write_objects`'s folder: the objects numbered `val_ids` of every class
    and every object of `val_classes` validate, the others train."""
    rows = []
    for image in sorted(root.glob("*/*.jpg")):
        object_id = image.stem.rsplit("_", 1)[0]
        held = image.parent.name in val_classes or int(object_id.rsplit("o", 1)[1]) in val_ids
        path = image.relative_to(out.parent) if image.is_relative_to(out.parent) else image
        rows.append([str(path), image.parent.name, object_id, "val" if held else "train"])
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "class", "id", "split"])
        writer.writerows(rows)
    return out
