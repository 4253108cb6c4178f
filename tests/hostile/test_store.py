"""Embedding store corruption: every way a store's files can go wrong is one line and exit 2, never rows from a
partial store or a traceback, on a local folder and on object storage (fsspec's memory://); a store of 0 images is
still a store; and an interrupted `pictag embed` to object storage resumes."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.csv as pacsv
import pytest
from hostile_inputs import interrupt_after_commits, model_args, one_line, thin_png
from PIL import Image

from conftest import upload
from pictag.cli.main import main
from pictag.errors import PictagError
from pictag.index.faiss_index import VectorIndex, build_index
from pictag.store.store import EmbeddingStore, Manifest, write_store


def _store(folder, rows=(40, 30, 30), dim=8):
    rng = np.random.default_rng(0)
    chunks, start = [], 0
    for n in rows:
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        chunks.append(
            ([f"img{i:04d}.jpg" for i in range(start, start + n)], vectors / np.linalg.norm(vectors, axis=1)[:, None])
        )
        start += n
    manifest = Manifest(model="open_clip:synthetic", weights_id="synthetic", preprocess="-", dim=dim)
    return write_store(folder, chunks, manifest)


def _manifest(folder, **changes):
    values = json.loads((folder / "manifest.json").read_text())
    values.update(changes)
    return values


def _write(folder, values):
    (folder / "manifest.json").write_text(json.dumps(values))


def _located(folder, where: str, request) -> str:
    """The store in `folder`, where the test wants it: there locally, or copied file by file to object storage."""
    return str(folder) if where == "local" else upload(folder, request.getfixturevalue("memory_url"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path):  # the same size, other bytes
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def _flip_page_byte(path):  # a byte inside the data pages: the footer stays whole, the page CRC does not
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "deleted shard": (lambda f: f.joinpath("part-000001.parquet").unlink(), "lacks 1 shard"),
    "extra copied shard": (
        lambda f: shutil.copy(f / "part-000001.parquet", f / "part-000001-copy.parquet"),
        "does not list",
    ),
    "truncated shard": (lambda f: _truncate(f / "part-000002.parquet"), "truncated or overwritten"),
    "garbage shard": (lambda f: _garbage(f / "part-000000.parquet"), "checksum|does not end like"),
    "manifest is a list": (lambda f: (f / "manifest.json").write_text("[1, 2]"), "holds a JSON list"),
    "manifest without model": (
        lambda f: _write(f, {k: v for k, v in _manifest(f).items() if k != "model"}),
        "no 'model'",
    ),
    "negative count": (lambda f: _write(f, _manifest(f, count=-5)), "'count' is -5"),
    "wrong count": (lambda f: _write(f, _manifest(f, count=5)), "count of 5"),
    "count as text": (lambda f: _write(f, _manifest(f, count="100")), "not a count"),
    "shard name escaping the store": (
        lambda f: _write(f, _manifest(f, shards=[{**s, "name": "../x.parquet"} for s in _manifest(f)["shards"]])),
        "shard 0 'name'",
    ),
    "manifest not JSON": (lambda f: (f / "manifest.json").write_bytes(b"\xff\xfe{"), "not valid JSON"),
    "deeply nested manifest": (
        lambda f: (f / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
        "not valid JSON",
    ),
}


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupt_store_is_one_line_and_exit_2(tmp_path, case, where, request, capsys):
    store = _store(tmp_path / "emb")
    assert len(EmbeddingStore(store.folder)) == 100
    corrupt, message = CORRUPTIONS[case]
    corrupt(store.folder)
    location = _located(store.folder, where, request)
    code = main(["classify", "--embeddings", location, "--labels", "a,b", "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_damaged_page_behind_a_whole_footer_is_one_line_when_read(tmp_path, where, request):
    store = _store(tmp_path / "emb", rows=(400,), dim=64)
    _flip_page_byte(store.folder / "part-000000.parquet")
    with pytest.raises(PictagError, match="part-000000.parquet cannot be read") as refused:
        list(EmbeddingStore(_located(store.folder, where, request)).iter_arrays())
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "file, content",
    [
        ("index.faiss", b"not a faiss index at all"),
        ("index.faiss", b""),
        ("index.json", b"{not json"),
        ("index.json", b"[1, 2, 3]"),
        ("index.json", b'{"type": "flat"}'),
        ("index.json", b'{"type": "nope", "count": 100, "dim": 8}'),
    ],
)
@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_corrupt_search_index_is_one_line(tmp_path, file, content, where, request):
    store = _store(tmp_path / "emb")
    build_index(store, "flat").save(store.folder)
    info = json.loads((store.folder / "index.json").read_text())
    (store.folder / file).write_bytes(content.replace(b'"count": 100', f'"count": {info["count"]}'.encode()))
    with pytest.raises(PictagError, match="rebuild it with `pictag index-embeddings") as refused:
        VectorIndex.load(EmbeddingStore(_located(store.folder, where, request)))
    assert "\n" not in str(refused.value)


def test_a_store_of_zero_images_is_used_with_its_own_model(tmp_path, tiny_open_clip, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "thin.png").write_bytes(thin_png(20000, 1))  # refused: every image of the source fails
    (folder / "empty.jpg").write_bytes(b"")
    assert (
        main(["embed", str(folder), "--out", str(tmp_path / "emb"), "--workers", "0", *model_args(tiny_open_clip)]) == 0
    )
    store = EmbeddingStore(tmp_path / "emb")
    assert len(store) == 0 and store  # empty, and still a store
    capsys.readouterr()
    # No --model: the store's own (the tiny one, with its checkpoint), not the default model to download.
    out = tmp_path / "o.csv"
    code = main(
        ["classify", "--embeddings", str(store.folder), "--labels", "a,b", "--out", str(out), "--device", "cpu"]
    )
    assert code == 0, capsys.readouterr().err
    assert pacsv.read_csv(out).num_rows == 0
    assert "classified 0 images" in capsys.readouterr().out


def test_an_interrupted_embed_to_object_storage_resumes(tmp_path, memory_url, tiny_open_clip, monkeypatch, capsys):
    import fsspec

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(folder / f"{i:02d}.png")
    embed = [
        "embed",
        str(folder),
        "--out",
        memory_url,
        "--unit-size",
        "4",
        "--workers",
        "0",
        *model_args(tiny_open_clip),
    ]
    memory = fsspec.filesystem("memory")
    memory.pipe_file(f"{memory_url}/notes.txt", b"someone else's")
    assert main(embed) == 2
    assert "exists and is not an embedding store" in one_line(capsys.readouterr().err)
    memory.rm_file(f"{memory_url}/notes.txt")

    with monkeypatch.context() as patch:
        interrupt_after_commits(patch, 1)
        assert main(embed) == 130
    with pytest.raises(PictagError, match="incomplete.*--resume"):
        EmbeddingStore(memory_url)
    capsys.readouterr()
    assert main(embed) == 2
    assert "has an interrupted run" in one_line(capsys.readouterr().err)
    assert main([*embed, "--resume"]) == 0  # the interrupted run's lease was given back: no wait
    keys = list(EmbeddingStore(memory_url).keys())
    assert len(keys) == len(set(keys)) == 12
