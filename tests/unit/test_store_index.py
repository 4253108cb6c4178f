"""Embedding store format, exact and approximate search, and calibration fitting, on synthetic vectors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pictag.errors import PictagError
from pictag.heads.calibration import fit_temperature, fit_thresholds, lowest_threshold
from pictag.index.faiss_index import VectorIndex, build_index, exact_search, recall_at_k
from pictag.pipeline.store_features import store_units
from pictag.store.store import EmbeddingStore, Manifest, write_store


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.35, centres_seed: int | None = None):
    """Unit vectors around random centres: like real embeddings, which cluster by content."""
    centres = np.random.default_rng(seed if centres_seed is None else centres_seed).standard_normal((clusters, dim))
    centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / math.sqrt(
        dim
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_store(folder, vectors: np.ndarray, rows_per_shard: int = 1000, dtype: str = "float16") -> EmbeddingStore:
    chunks = (
        ([f"img{i:06d}" for i in range(a, min(a + rows_per_shard, len(vectors)))], vectors[a : a + rows_per_shard])
        for a in range(0, len(vectors), rows_per_shard)
    )
    manifest = Manifest(
        model="open_clip:synthetic", weights_id="synthetic", preprocess="-", dim=vectors.shape[1], dtype=dtype
    )
    return write_store(folder, chunks, manifest)


def test_store_round_trip(tmp_path):
    vectors = clustered(2500, 32, 10, seed=0)
    store = make_store(tmp_path / "emb", vectors)
    assert len(store) == 2500 and len(store.shards()) == 3
    assert pq.read_schema(store.folder / store.shards()[0]).field("embedding").type == pa.list_(pa.float16(), 32)
    chunks = list(store.iter_arrays(chunk_rows=700))
    assert chunks[0][1].dtype == np.float16 and chunks[0][1].base is not None  # a view on Arrow's buffer
    np.testing.assert_allclose(np.concatenate([c for _, c in chunks]), vectors, atol=1e-3)
    assert store.keys()[1234] == "img001234"
    keys, found = store.get(["img002000", "missing", "img000007"])
    assert keys == ["img002000", "img000007"]
    np.testing.assert_allclose(found, vectors[[2000, 7]], atol=1e-3)
    units = store_units(store)
    assert [u.size for u in units] == [1000, 1000, 500] and [u.id for u in units] == store.shards()
    last = list(store.iter_arrays(shards=[store.shards()[-1]]))
    assert sum(len(k) for k, _ in last) == 500 and last[0][0][0].as_py() == "img002000"
    exact = make_store(tmp_path / "emb32", vectors, dtype="float32")
    np.testing.assert_array_equal(np.concatenate([c for _, c in exact.iter_arrays()]), vectors)


def test_opening_a_store_on_object_storage_reads_every_footer_in_one_batch(memory_url, monkeypatch):
    """Per shard there is no request of its own: one listing gives the sizes and one batch of ranged reads (sent at
    once by s3fs and gcsfs) the footers, where each shard took an open and two reads one after another."""
    from fsspec.implementations.memory import MemoryFileSystem

    store = make_store(memory_url, clustered(600, 8, 3, seed=0), rows_per_shard=10)
    calls: list[str] = []
    for name in ("ls", "info", "open", "cat_file", "cat_ranges"):
        method = getattr(MemoryFileSystem, name)

        def counted(self, *args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(MemoryFileSystem, name, counted)
    opened = EmbeddingStore(memory_url)
    assert calls.count("cat_ranges") == 1 and calls.count("ls") == 1 and "open" not in calls, calls
    assert len(opened.shards()) == 60 and opened.manifest == store.manifest


def test_store_and_its_index_on_an_fsspec_url(tmp_path, memory_url):
    vectors = clustered(2500, 32, 10, seed=0)
    local, remote = make_store(tmp_path / "emb", vectors), make_store(memory_url, vectors)
    assert remote.folder == memory_url and remote.manifest.shards == local.manifest.shards
    assert remote.shards() == local.shards() and [u.size for u in store_units(remote)] == [1000, 1000, 500]
    np.testing.assert_array_equal(remote.keys(), local.keys())
    for (keys, chunk), (local_keys, local_chunk) in zip(remote.iter_arrays(700), local.iter_arrays(700), strict=True):
        assert keys.equals(local_keys)
        np.testing.assert_array_equal(chunk, local_chunk)
    last = list(remote.iter_arrays(shards=[remote.shards()[-1]]))
    assert sum(len(k) for k, _ in last) == 500 and last[0][0][0].as_py() == "img002000"
    keys, found = remote.get(["img002000", "missing", "img000007"])
    assert keys == ["img002000", "img000007"]
    np.testing.assert_array_equal(found, local.get(keys)[1])
    with pytest.raises(PictagError, match="already holds an embedding store"):
        make_store(memory_url, vectors)

    queries = clustered(7, 32, 10, seed=2)
    assert VectorIndex.load(remote) is None
    assert build_index(remote, "flat").save(remote.folder) == f"{memory_url}/index.faiss"
    loaded = VectorIndex.load(EmbeddingStore(memory_url))  # read whole: Faiss cannot memory-map a URL
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], exact_search(local, queries, 10)[1])


def test_incomplete_or_foreign_store_refused(tmp_path):
    with pytest.raises(PictagError, match="not an embedding store"):
        EmbeddingStore(tmp_path)
    Manifest(model="m:x", weights_id="w", preprocess="p", dim=4).write(tmp_path)
    with pytest.raises(PictagError, match="incomplete.*--resume"):
        EmbeddingStore(tmp_path)


def test_exact_search_is_exact(tmp_path):
    vectors = clustered(3000, 32, 20, seed=1)
    store = make_store(tmp_path / "emb", vectors, rows_per_shard=700)
    queries = clustered(7, 32, 20, seed=2)
    stored = np.concatenate([c for _, c in store.iter_arrays()]).astype(np.float32)
    truth = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
    scores, ids = exact_search(store, queries, 10)
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ stored.T, truth, axis=1), atol=1e-5)
    flat = build_index(store, "auto")
    assert flat.info.type == "flat" and "exact" in flat.info.reason
    np.testing.assert_array_equal(flat.search(queries, 10)[1], truth)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_recall_against_exact(tmp_path, index_type):
    store = make_store(tmp_path / "emb", clustered(10000, 32, 64, seed=3), rows_per_shard=3000)
    index = build_index(store, index_type, target_recall=0.95)
    assert index.info.recall_at_10 >= 0.95, index.info
    index.save(store.folder)
    loaded = VectorIndex.load(store)
    assert loaded.info.params == index.info.params
    # Held out: new images of the same collection, and queries off the data like texts (cosine ~0.3 to an image).
    fresh = clustered(200, 32, 64, seed=4, centres_seed=3)
    noise = np.random.default_rng(5).standard_normal(fresh.shape).astype(np.float32)
    noise -= (noise * fresh).sum(1, keepdims=True) * fresh
    off = fresh + 3.18 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    for queries in (fresh, off / np.linalg.norm(off, axis=1, keepdims=True)):
        truth = exact_search(store, queries, 10)[1]
        assert recall_at_k(loaded.search(queries, 10)[1], truth) >= 0.95


def test_index_of_another_store_state_refused(tmp_path):
    store = make_store(tmp_path / "emb", clustered(500, 16, 4, seed=5))
    build_index(store, "flat").save(store.folder)
    # The index was built when the store held 499 vectors (a store whose own manifest disagrees with its shards
    # is refused before its index is looked at).
    info = json.loads((store.folder / "index.json").read_text())
    (store.folder / "index.json").write_text(json.dumps({**info, "count": 499}))
    with pytest.raises(PictagError, match="rebuild it with `pictag index-embeddings"):
        VectorIndex.load(EmbeddingStore(store.folder))


def test_lowest_threshold_known_answer():
    # Predictions are right exactly when their score is >= 0.6: at target precision 1.0 the threshold is the
    # lowest right score, and at 0.75 it may admit one wrong among the four best below-0.6 scores... computed by hand.
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.62, 0.55, 0.5, 0.3])
    correct = scores >= 0.6
    assert lowest_threshold(scores, correct, 1.0) == (0.62, 1.0)
    assert lowest_threshold(scores, correct, 5 / 6) == (0.55, 5 / 6)
    assert lowest_threshold(scores, np.zeros(8, bool), 0.5) is None
    # Ties are all accepted together: at 0.8 precision with the tied pair one right, one wrong.
    assert lowest_threshold(np.array([0.9, 0.5, 0.5]), np.array([True, True, False]), 0.8) == (0.9, 1.0)


def test_per_class_thresholds_on_synthetic_set():
    rng = np.random.default_rng(0)
    true_cut = {0: 0.3, 1: 0.7}  # class c's predictions are right exactly when their score is above its cut
    scores, predicted, truth = [], [], []
    for c, cut in true_cut.items():
        s = rng.uniform(0, 1, 2000)
        scores.append(s)
        predicted.append(np.full(2000, c))
        truth.append(np.where(s > cut, c, 1 - c))
    scores, predicted, truth = map(np.concatenate, (scores, predicted, truth))
    # class 2 is never predicted; class 3 is predicted but always wrong
    scores = np.append(scores, [0.99, 0.98])
    predicted = np.append(predicted, [3, 3])
    truth = np.append(truth, [0, 1])
    thresholds, report, pooled = fit_thresholds(scores, predicted, truth, ["a", "b", "c", "d"], target=1.0)
    for c, label in [(0, "a"), (1, "b")]:
        mine = scores[(predicted == c)]
        assert thresholds[label] == mine[mine > true_cut[c]].min()
        assert report[label]["status"] == "fitted"
    assert report["c"]["status"] == "no_data" and thresholds["c"] == pooled
    assert report["d"]["status"] == "unreachable" and thresholds["d"] == math.inf


def test_temperature_recovers_the_true_one():
    torch.manual_seed(0)
    logits = torch.randn(8000, 10) * 4
    truth = torch.distributions.Categorical(logits=logits / 2.5).sample()
    assert fit_temperature(logits, truth) == pytest.approx(2.5, rel=0.05)
