"""Product tables: schema inference and overrides, text building, images found by id, and one-line refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pictag.data.products import ImageIndex, build_text, infer_schema, read_products
from pictag.errors import PictagError


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("columns", "options", "expected"),
    [
        (["id", "categories", "label", "title", "description"], {}, ("id", "categories", ("title", "description"))),
        (["id", "label", "text"], {}, ("id", "label", ("text",))),
        (["id", "label", "description", "text"], {}, ("id", "label", ("description",))),
        (["id", "label"], {}, ("id", "label", ())),
        (
            ["sku", "cls", "name", "blurb"],
            {"id_col": "sku", "label_col": "cls", "text_cols": "blurb,name"},
            ("sku", "cls", ("blurb", "name")),
        ),
        (["id", "title"], {"need_label": False}, ("id", None, ("title",))),
    ],
)
def test_schema_inference_and_overrides(columns, options, expected):
    schema = infer_schema(columns, **options)
    assert (schema.id, schema.label, schema.text) == expected


@pytest.mark.parametrize(
    ("columns", "options", "message"),
    [
        (["sku", "label"], {}, "has no id column (id); its columns: sku, label: name one with --id-col"),
        (["id", "title"], {}, "has no label column (categories or label); its columns: id, title"),
        (["id", "label"], {"text_cols": "title"}, "--text-cols title: the table has no such column"),
        (
            ["id", "label"],
            {"label_col": "cat"},
            "--label-col cat: the table has no such column (its columns: id, label)",
        ),
    ],
)
def test_missing_and_unknown_columns_are_refused_listing_the_columns(columns, options, message):
    with pytest.raises(PictagError) as err:
        infer_schema(columns, **options)
    assert message in str(err.value)


def test_text_is_built_field_by_field():
    assert build_text(["  Red  shirt ", None, float("nan"), "", "nan", "cotton"]) == "Red  shirt cotton"
    assert build_text([]) == ""
    assert build_text([12, " x"]) == "12 x"


def test_images_by_id_exact_suffixes_first_then_views(tmp_path):
    for name in ["7.png", "7.jpg", "7_b.jpg", "7_a.webp", "77.jpg", "7x.jpg", "8_1.jpeg", "a_b_1.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    index = ImageIndex(tmp_path)
    assert [Path(p).name for p in index.find("7")] == ["7.jpg", "7_a.webp", "7_b.jpg"]
    assert [Path(p).name for p in index.find("77")] == ["77.jpg"]
    assert [Path(p).name for p in index.find("8")] == ["8_1.jpeg"]
    assert [Path(p).name for p in index.find("a_b")] == ["a_b_1.jpg"]
    assert index.find("9") == () and index.find("notes") == ()


def test_read_products_counts_missing_images_and_refuses_them_on_request(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "1.jpg").write_bytes(b"x")
    table = _csv(
        tmp_path / "p.csv",
        [
            {"id": "1", "categories": "shoe", "title": " Red ", "description": ""},
            {"id": "2", "categories": "bag", "title": "Blue", "description": "leather"},
        ],
    )
    products = read_products(table, images=images)
    assert "2 products; schema id=id, label=categories, text=title + description" in capsys.readouterr().out
    assert products.texts == ("Red", "Blue leather") and products.labels == ("shoe", "bag")
    assert products.missing == ["2"] and products.folds is None
    with pytest.raises(PictagError, match="1 product\\(s\\) have no image in .* \\(e.g. id 2"):
        read_products(table, images=images, missing_image="error", quiet=True)


def test_a_table_and_its_images_in_object_storage(tmp_path):
    import fsspec

    root = f"pictag-products-{tmp_path.name}"
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/{root}/p.csv", b"id,label,title\n1,shoe,Red\n2,bag,Blue\n")
    memory.pipe(f"/{root}/images/1.jpg", b"x")
    memory.pipe(f"/{root}/images/1_b.png", b"x")
    memory.pipe(f"/{root}/images/sub/2.jpg", b"x")  # a folder's subfolders are not looked in
    try:
        products = read_products(f"memory://{root}/p.csv", images=f"memory://{root}/images", quiet=True)
        with pytest.raises(PictagError, match="is not a folder"):
            read_products(f"memory://{root}/p.csv", images=f"memory://{root}/nothing", quiet=True)
    finally:
        memory.rm(f"/{root}", recursive=True)
    assert products.labels == ("shoe", "bag") and products.texts == ("Red", "Blue")
    assert products.images == ((f"memory://{root}/images/1.jpg", f"memory://{root}/images/1_b.png"), ())


def test_parquet_with_nulls_and_a_fold_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [1, 2], "label": ["a", "b"], "text": [None, "x"], "fold": [0, 1]}), path)
    products = read_products(path, quiet=True)
    assert products.ids == ("1", "2") and products.texts == ("", "x") and products.folds == ("0", "1")


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        (None, {}, "is empty (no product rows)"),
        ([{"id": "1", "label": "a"}], {"need_text": True}, "has no text column (title, description or text"),
        ([{"id": "1", "label": "a"}, {"id": "1", "label": "b"}], {}, "id 1 appears more than once"),
        ([{"id": "1", "label": ""}], {}, "1 product(s) have an empty label"),
    ],
)
def test_bad_tables_are_one_line(tmp_path, rows, options, message):
    path = tmp_path / "p.csv"
    if rows is None:
        path.write_text("id,label,text\n")
    else:
        _csv(path, rows)
    with pytest.raises(PictagError) as err:
        read_products(path, quiet=True, **options)
    assert message in str(err.value) and "\n" not in str(err.value)
