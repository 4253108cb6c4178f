"""Synthetic products whose label needs the image and the text together: c<image bit><text bit>."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["soft", "new", "classic", "cotton", "summer", "slim", "daily"]


def write_products(root: Path, per_class: int = 12, seed: int = 0, fold_column: bool = False) -> Path:
    """products.csv (id, categories, title, description[, fold]) and images/<id>.png: label c<image bit><text bit>."""
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True)
    rows, n = [], 0
    for image_bit in (0, 1):
        for text_bit in (0, 1):
            for k in range(per_class):
                n += 1
                colour = np.array((200, 30, 30) if image_bit == 0 else (30, 30, 200))
                noise = np.random.default_rng(seed * 1000 + n).normal(0, 25, (48, 48, 3))
                Image.fromarray(np.clip(colour + noise, 0, 255).astype("uint8")).save(images / f"{n}.png")
                # Three times the word: a one-layer random text tower pools it more clearly than once.
                title = ("alpha " if text_bit == 0 else "omega ") * 3 + rng.choice(WORDS)
                row = {"id": str(n), "categories": f"c{image_bit}{text_bit}", "title": title, "description": ""}
                if fold_column:
                    row["fold"] = "AB"[k % 2]
                rows.append(row)
    with open(root / "products.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
