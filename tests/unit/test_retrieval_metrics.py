"""Recall@K, MAP@R and per-class recall of pictag.eval.retrieval against a brute-force numpy computation."""

from __future__ import annotations

import numpy as np
import pytest

from pictag.errors import PictagError
from pictag.eval.retrieval import recall_at_k, retrieval_metrics


def normalised(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries, q_labels, gallery, g_labels, ks, leave_one_out=False):
    """Recall@K and MAP@R from the full similarity matrix, the way the definitions read."""
    sims = queries @ gallery.T
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    correct = np.asarray(g_labels)[order] == np.asarray(q_labels)[:, None]
    recall = {k: float(correct[:, :k].any(axis=1).mean()) for k in ks}
    aps = []
    for row, label in zip(correct, q_labels, strict=True):
        r = int((np.asarray(g_labels) == label).sum()) - leave_one_out
        if r > 0:
            aps.append(sum(row[:i].sum() / i for i in range(1, r + 1) if row[i - 1]) / r)
    return recall, float(np.mean(aps))


@pytest.mark.parametrize("chunk", [7, 4096])
def test_recall_and_map_at_r_equal_brute_force(chunk):
    rng = np.random.default_rng(0)
    # Clustered data, so that recall is neither 0 nor 1 and the ranks matter.
    centres = normalised(rng, 6)
    q_labels, g_labels = rng.integers(0, 6, 50), rng.integers(0, 6, 300)
    queries = centres[q_labels] + 0.6 * normalised(rng, 50)
    gallery = centres[g_labels] + 0.6 * normalised(rng, 300)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    got = retrieval_metrics(queries, q_labels, gallery, g_labels, [1, 5, 10], chunk=chunk, keep_top=5)
    recall, map_at_r = brute_force(queries, q_labels, gallery, g_labels, [1, 5, 10])
    assert got.recall == pytest.approx(recall, abs=1e-9)
    assert 0.2 < recall[1] < 1
    assert got.map_at_r == pytest.approx(map_at_r, abs=1e-6)
    assert recall_at_k(queries, q_labels, gallery, g_labels, [1, 5, 10], chunk=chunk) == got.recall
    assert got.neighbours.shape == (50, 5)
    assert (got.neighbours[:, 0] == np.argmax(queries @ gallery.T, axis=1)).all()
    # Per-class recall averages back to the overall recall, weighted by each class's queries.
    total = sum(c["queries"] * c[1] for c in got.per_class.values())
    assert total / 50 == pytest.approx(recall[1])


def test_leave_one_out_never_returns_the_query_itself():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 80).astype(str)
    x = normalised(rng, 80, dim=4)
    got = retrieval_metrics(x, labels, x, labels, [1, 3], leave_one_out=True, chunk=16, keep_top=3)
    recall, map_at_r = brute_force(x, labels, x, labels, [1, 3], leave_one_out=True)
    assert (got.neighbours != np.arange(80)[:, None]).all()
    assert got.recall == pytest.approx(recall)
    assert got.map_at_r == pytest.approx(map_at_r, abs=1e-6)


def test_bad_input_is_one_line_error():
    rng = np.random.default_rng(2)
    x = normalised(rng, 5)
    with pytest.raises(PictagError, match="more neighbours than the gallery's 5"):
        recall_at_k(x, list("aaaaa"), x, list("aaaaa"), [1, 10])
    with pytest.raises(PictagError, match="gallery's 4"):
        recall_at_k(x, list("aaaaa"), x, list("aaaaa"), [5], leave_one_out=True)
    with pytest.raises(PictagError, match="not L2-normalised"):
        recall_at_k(x * 3, list("aaaaa"), x, list("aaaaa"), [1])
    with pytest.raises(PictagError, match="one label per vector"):
        recall_at_k(x, list("aaa"), x, list("aaaaa"), [1])
    with pytest.raises(PictagError, match="same model"):
        recall_at_k(x, list("aaaaa"), normalised(rng, 5, dim=4), list("aaaaa"), [1])


@pytest.mark.parametrize("classes", [4000, 4])
def test_chunked_search_memory_is_bounded_far_below_a_full_matrix(classes, monkeypatch):
    import tracemalloc

    import faiss  # noqa: F401  (imported before tracing: the module's own allocations are not the search's)

    from pictag.eval import retrieval

    rng = np.random.default_rng(3)
    queries, gallery = normalised(rng, 1000, dim=16), normalised(rng, 20000, dim=16)
    q_labels, g_labels = rng.integers(0, classes, 1000), rng.integers(0, classes, 20000)
    full = 1000 * 20000 * 4  # one float32 similarity matrix: 80 MB
    # With 4 classes R is about 5,000: MAP@R needs each query's first 5,000 results, 1000 x 5,000 of them in one go;
    # the budget makes chunks of about 25 queries.
    budget = 4 << 20
    monkeypatch.setattr(retrieval, "CHUNK_BYTES", budget)
    tracemalloc.start()
    try:
        got = retrieval.retrieval_metrics(queries, q_labels, gallery, g_labels, [1, 10], chunk=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy and Faiss's Python wrapper allocate through tracemalloc's hooks: the peak is a chunk's results and work
    # arrays (the budget) and per-query arrays, never anything queries x gallery.
    assert peak < 1.5 * budget < full / 10, f"peak {peak / 2**20:.1f} MB"
    assert 0 <= got.recall[1] <= got.recall[10] <= 1 and got.queries == 1000


def test_overlap_counts_the_queries_that_have_something_to_find():
    from pictag.eval.retrieval import overlap

    found = overlap(["a", "a", "b", "c"], ["a", "b", "b"])
    assert (found.answerable, found.queries, found.missing) == (3, 4, {"c": 1})
    # Leave-one-out: a class with a single image has nothing else to find.
    found = overlap(["a", "a", "b"], ["a", "a", "b"], leave_one_out=True)
    assert (found.answerable, found.missing) == (2, {"b": 1})
