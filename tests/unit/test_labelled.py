"""Labelled sources: a folder of classes in every storage, tables with label and text columns, and clear errors."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import write_tar
from pictag.data import build_tar_index, open_source
from pictag.errors import PictagError


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (shade, shade, shade)).save(buf, "JPEG")
    return buf.getvalue()


# Nested folders below a class belong to it; a file that is not an image is no record.
CLASSES = {"cat/1.jpg": _jpeg(10), "cat/2021/2.jpg": _jpeg(20), "dog/3.jpg": _jpeg(30), "dog/notes.txt": b"x"}
LABELS = {"cat/1.jpg": "cat", "cat/2021/2.jpg": "cat", "dog/3.jpg": "dog"}


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _labels(source) -> dict[str, str | None]:
    return {r.key: r.label for r in source}


def test_folder_of_classes_labels_each_image_by_its_first_folder(tmp_path):
    root = _folder(tmp_path / "data", CLASSES)
    source = open_source(root, labelled=True)
    assert source.classes == ("cat", "dog")
    assert _labels(source) == LABELS
    assert all(r.text is None and r.meta == {} and r.data for r in source)
    # Labels travel inside the shards, which stay small and picklable for DataLoader workers.
    shards = [pickle.loads(pickle.dumps(shard)) for shard in source.shards()]
    assert {r.key: r.label for shard in shards for r in shard.read()} == LABELS
    unlabelled = open_source(root)
    assert unlabelled.classes == () and set(_labels(unlabelled).values()) == {None}


def test_folder_of_classes_in_a_tar_and_in_tar_shards(tmp_path):
    tar = write_tar(tmp_path / "data.tar", CLASSES)
    assert _labels(open_source(tar, labelled=True)) == LABELS
    # `tar -C data -cf data.tar .` writes ./<class>/ members.
    dotted = write_tar(tmp_path / "dotted.tar", {f"./{k}": v for k, v in CLASSES.items()})
    assert set(_labels(open_source(dotted, labelled=True)).values()) == {"cat", "dog"}
    write_tar(tmp_path / "shards/000.tar", {"cat/1.jpg": _jpeg(1), "dog/1.jpg": _jpeg(2)})
    write_tar(tmp_path / "shards/001.tar", {"cat/2.jpg": _jpeg(3), "bird/2.jpg": _jpeg(4)})
    source = open_source(f"{tmp_path}/shards/{{000..001}}.tar", labelled=True)
    assert source.classes == ("bird", "cat", "dog")
    assert _labels(source) == {
        "000/cat/1.jpg": "cat",
        "000/dog/1.jpg": "dog",
        "001/cat/2.jpg": "cat",
        "001/bird/2.jpg": "bird",
    }


def test_folder_of_classes_and_tar_through_an_fsspec_url(tmp_path):
    fs = fsspec.filesystem("memory")
    for name, data in CLASSES.items():
        fs.pipe(f"/pictag-labelled/data/{name}", data)
    tar = write_tar(tmp_path / "data.tar", CLASSES)
    fs.pipe("/pictag-labelled/data.tar", tar.read_bytes())
    fs.pipe("/pictag-labelled/data.index.parquet", build_tar_index(tar).read_bytes())
    try:
        source = open_source("memory://pictag-labelled/data", labelled=True)
        assert source.classes == ("cat", "dog") and _labels(source) == LABELS
        assert _labels(open_source("memory://pictag-labelled/data.tar", labelled=True)) == LABELS
        fs.mkdir("/pictag-labelled/data/fish")
        with pytest.raises(PictagError, match=r"memory://pictag-labelled/data has empty class folder\(s\) 'fish'"):
            open_source("memory://pictag-labelled/data", labelled=True)
    finally:
        fs.rm("/pictag-labelled", recursive=True)


def _write_table(table: pa.Table, path: Path) -> Path:
    pv.write_csv(table, path) if path.suffix == ".csv" else pq.write_table(table, path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_label_and_text_columns_keeps_the_rest_as_meta(tmp_path, suffix):
    _folder(tmp_path / "imgs", {"a.jpg": _jpeg(1), "b.jpg": _jpeg(2)})
    absolute = str(_folder(tmp_path / "elsewhere", {"c.jpg": _jpeg(3)}) / "c.jpg")
    table = pa.table(
        {
            "path": ["imgs/a.jpg", "imgs/b.jpg", absolute],
            "label": ["007", "010", "007"],
            "text": ["a red shirt", None, "blue jeans"],
            "id": [1, 2, 3],
        }
    )
    source = open_source(_write_table(table, tmp_path / f"train{suffix}"), labelled=True)
    records = {r.key: r for r in source}
    assert source.classes == ("007", "010")  # labels stay as written, even where they look like numbers
    assert records["imgs/a.jpg"].data and records[absolute].data  # paths relative to the table, or absolute
    assert [(r.label, r.text, dict(r.meta)) for r in records.values()] == [
        ("007", "a red shirt", {"id": 1}),
        ("010", None, {"id": 2}),
        ("007", "blue jeans", {"id": 3}),
    ]
    unlabelled = open_source(tmp_path / f"train{suffix}")
    assert unlabelled.classes == () and all(r.label is None and r.meta == {} for r in unlabelled)


def test_table_column_names_are_chosen_by_the_caller(tmp_path):
    _folder(tmp_path, {"a.jpg": _jpeg(1), "b.jpg": _jpeg(2)})
    table = pa.table({"file": ["a.jpg", "b.jpg"], "category": ["x", "y"], "title": ["t1", "t2"], "text": ["u", "v"]})
    path = _write_table(table, tmp_path / "t.parquet")
    source = open_source(path, labelled=True, path_column="file", label_column="category", text_column="title")
    assert [(r.label, r.text, dict(r.meta)) for r in source] == [("x", "t1", {"text": "u"}), ("y", "t2", {"text": "v"})]


def test_labelled_errors_name_the_fix(tmp_path):
    loose = _folder(tmp_path / "loose", {**CLASSES, "stray.jpg": _jpeg(5)})
    with pytest.raises(PictagError, match=r"1 image\(s\) lie outside any class folder \(e.g. stray.jpg\): move each"):
        open_source(loose, labelled=True)
    with pytest.raises(PictagError, match=r"outside any class folder \(e.g. stray.jpg\)"):
        open_source(write_tar(tmp_path / "loose.tar", {**CLASSES, "stray.jpg": _jpeg(5)}), labelled=True)
    empty = _folder(tmp_path / "empty", {**CLASSES, "fish/readme.txt": b"x"})
    (empty / "owl").mkdir()
    with pytest.raises(PictagError, match=r"empty has empty class folder\(s\) 'fish', 'owl': add images or remove"):
        open_source(empty, labelled=True)

    _folder(tmp_path, {"a.jpg": _jpeg(1), "b.jpg": _jpeg(2)})
    unlabelled = _write_table(pa.table({"path": ["a.jpg", "b.jpg"], "class": ["x", "y"]}), tmp_path / "u.csv")
    with pytest.raises(PictagError, match=r"has no column 'label' \(it has path, class\): name the column of labels"):
        open_source(unlabelled, labelled=True)
    with pytest.raises(PictagError, match=r"has no column 'caption' \(it has path, class\): name the column of texts"):
        open_source(unlabelled, labelled=True, label_column="class", text_column="caption")
    gap = _write_table(pa.table({"path": ["a.jpg", "b.jpg"], "label": ["x", None]}), tmp_path / "gap.parquet")
    with pytest.raises(PictagError, match=r"row 2 of .*gap.parquet has no 'label': fill it in or drop the row"):
        open_source(gap, labelled=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_labels_and_texts_travel_with_their_embeddings(tmp_path, tiny_open_clip, workers):
    from pictag.models import create_model
    from pictag.pipeline.runner import iter_embeddings

    files = {f"{i}.jpg": _jpeg(i * 20) for i in range(5)}
    files["4.jpg"] = b"\xff\xd8 broken"
    _folder(tmp_path, files)
    table = pa.table({"path": list(files), "label": list("aabbb"), "text": [f"photo {i}" for i in range(5)]})
    source = open_source(_write_table(table, tmp_path / "t.csv"), labelled=True)
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    rows = []
    for batch in iter_embeddings(source, encoder, batch_size=2, workers=workers):
        assert len(batch.labels) == len(batch.texts) == len(batch.keys) == len(batch.features)
        rows += zip(batch.keys, batch.labels, batch.texts, strict=True)
    assert rows == [
        ("0.jpg", "a", "photo 0"),
        ("1.jpg", "a", "photo 1"),
        ("2.jpg", "b", "photo 2"),
        ("3.jpg", "b", "photo 3"),
    ]
