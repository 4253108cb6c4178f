"""A product table is a source: its records are each product's image views with the product's label, text and id,
and the one decode dataset reads a product's views from its shards."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from pictag.data import open_source
from pictag.data.crops import DecodedImages, Decoder
from pictag.data.products import ProductSource, open_products
from pictag.errors import PictagError
from pictag.models.preprocess import Preprocess

_PREPROCESS = Preprocess((16, 16), 16, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _table(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(images / "1.png")
    Image.new("RGB", (32, 32), (0, 200, 0)).save(images / "1_2.png")
    Image.new("RGB", (32, 32), (0, 0, 200)).save(images / "3.png")
    table = tmp_path / "p.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "categories", "title", "description"])
        writer.writeheader()
        writer.writerows(
            [
                {"id": "1", "categories": "shoe", "title": "Red", "description": "suede"},
                {"id": "2", "categories": "bag", "title": "Blue", "description": ""},
                {"id": "3", "categories": "bag", "title": "Green", "description": "canvas"},
            ]
        )
    return table, images


def test_open_source_reads_a_product_table_as_its_image_views(tmp_path):
    table, images = _table(tmp_path)
    source = open_source(table, images=images, quiet=True)
    records = list(source)
    assert [Path(r.key).name for r in records] == ["1.png", "1_2.png", "3.png"], "a product without an image has none"
    assert [(r.label, r.text, r.meta["id"]) for r in records] == [
        ("shoe", "Red suede", "1"),
        ("shoe", "Red suede", "1"),
        ("bag", "Green canvas", "3"),
    ]
    assert records[0].data == (images / "1.png").read_bytes() and source.classes == ("bag", "shoe")
    with pytest.raises(PictagError, match="have no image"):
        open_source(table, images=images, missing_image="error", quiet=True)
    with pytest.raises(PictagError, match="product table"):
        open_source(images, images=images)


def test_a_products_views_decode_through_the_one_decode_dataset(tmp_path):
    table, images = _table(tmp_path)
    source = open_products(table, images=images, quiet=True)
    assert isinstance(source, ProductSource) and len(source) == 3 and len(source.products) == 3
    assert source.views == (((0, 0), (0, 1)), (), ((0, 2),))
    source = pickle.loads(pickle.dumps(source))  # DataLoader workers get the shards
    decoded = DecodedImages(source.parts, source.views, Decoder(_PREPROCESS))
    first, missing, third = (decoded[i]["crop"] for i in range(3))
    assert first[8, 8].tolist() == [200, 0, 0] and third[8, 8].tolist() == [0, 0, 200]
    assert torch.equal(missing, torch.zeros(16, 16, 3, dtype=torch.uint8)), "the black placeholder"
    drawn = DecodedImages(source.parts, source.views, Decoder(_PREPROCESS), random_view=True)
    seen = {tuple(drawn[(0, epoch)]["crop"][8, 8].tolist()) for epoch in range(16)}
    assert seen == {(200, 0, 0), (0, 200, 0)}, "a random view is drawn from all of a product's views"
    part = source.select([2, 0])
    assert part.products.ids == ("3", "1") and part.views == (((0, 0),), ((0, 1), (0, 2)))
