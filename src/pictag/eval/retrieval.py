"""Retrieval metrics of an embedding: Recall@K, MAP@R and per-class recall, by exact Faiss search in chunks.

    recall_at_k(queries, query_labels, gallery, gallery_labels, ks, *, leave_one_out=False, chunk=4096)
        -> {k: recall}
    retrieval_metrics(...same..., keep_top=0) -> RetrievalMetrics   # recall, map@r, per class, top neighbours

Vectors are L2-normalised float32 rows, so inner product is cosine similarity (and ranks as L2 distance does).
The search never builds a query × gallery matrix: `faiss.knn` scans the gallery in place (no index copy of it)
for `chunk` queries at a time, and keeps only each query's top D, where D is the largest K asked, or the largest R
of MAP@R in the chunk. Peak memory is the inputs plus about chunk × D × 32 bytes of results and work arrays, at
most CHUNK_BYTES (the benchmark benchmarks/metric_learning_eval.py measures it at 100k queries × 1M gallery vectors).

Recall@K is the fraction of queries with at least one gallery item of their label among their K nearest (the
metric-learning papers' Recall@K, pytorch-metric-learning's `precision_at_1` when K=1). MAP@R (Musgrave et al.,
"A Metric Learning Reality Check") averages, over the first R results where R is the number of gallery items of the
query's label, the precision at each correct result; queries whose label has no gallery item are left out of it.
With `leave_one_out`, the queries are the gallery itself and each query's own row is not a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pictag.errors import PictagError

CHUNK = 4096
# A chunk's results (float32 score, int64 id) and the work arrays of MAP@R over them take about this many bytes per
# result; when D is large (a class with many gallery items makes R large), a chunk holds fewer queries, so that
# this stays under CHUNK_BYTES.
BYTES_PER_RESULT = 32
CHUNK_BYTES = 256 << 20


@dataclass
class RetrievalMetrics:
    """What `retrieval_metrics` measured.

    Attributes:
        recall: Recall@K for each K asked.
        map_at_r: MAP@R over the queries whose label is in the gallery.
        per_class: For each query label, its number of queries and its Recall@K for each K.
        queries: Number of queries.
        gallery: Number of gallery items (for leave-one-out, the same set; each query sees one fewer).
        neighbours: The `keep_top` nearest gallery positions of each query, best first (queries × keep_top).
    """

    recall: dict[int, float]
    map_at_r: float
    per_class: dict[str, dict] = field(default_factory=dict)
    queries: int = 0
    gallery: int = 0
    neighbours: np.ndarray | None = None


def recall_at_k(
    queries: np.ndarray,
    query_labels: Sequence,
    gallery: np.ndarray,
    gallery_labels: Sequence,
    ks: Sequence[int],
    *,
    leave_one_out: bool = False,
    chunk: int = CHUNK,
) -> dict[int, float]:
    """Recall@K of `queries` against `gallery` for each K in `ks` (see the module docstring).

    Raises:
        PictagError: empty or mismatched inputs, vectors that are not L2-normalised, or a K larger than the gallery.
    """
    return retrieval_metrics(
        queries, query_labels, gallery, gallery_labels, ks, leave_one_out=leave_one_out, chunk=chunk
    ).recall


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: Sequence,
    gallery: np.ndarray,
    gallery_labels: Sequence,
    ks: Sequence[int],
    *,
    leave_one_out: bool = False,
    chunk: int = CHUNK,
    keep_top: int = 0,
) -> RetrievalMetrics:
    """Recall@K, MAP@R and per-class Recall@K in one chunked pass over the queries.

    Args:
        queries: (Q, dim) L2-normalised float32 rows; with `leave_one_out`, the gallery itself.
        query_labels: Q labels (any values that compare equal as strings).
        gallery: (G, dim) L2-normalised float32 rows.
        gallery_labels: G labels.
        ks: The K of each Recall@K.
        leave_one_out: Each query is a gallery row (same position) and is not its own result.
        chunk: Queries per search; memory grows with it, speed barely does beyond a few thousand.
        keep_top: Keep each query's first `keep_top` results (for plots); 0 keeps none.

    Raises:
        PictagError: empty or mismatched inputs, vectors that are not L2-normalised, or a K larger than the gallery.
    """
    import faiss

    queries, gallery = _vectors(queries, "queries"), _vectors(gallery, "gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise PictagError(
            f"queries have {queries.shape[1]} dimensions and the gallery {gallery.shape[1]}: embed both with "
            "the same model"
        )
    if len(query_labels) != len(queries) or len(gallery_labels) != len(gallery):
        raise PictagError(
            f"{len(queries)} queries with {len(query_labels)} labels, {len(gallery)} gallery items with "
            f"{len(gallery_labels)} labels: give one label per vector"
        )
    if leave_one_out and len(queries) != len(gallery):
        raise PictagError("leave-one-out searches a set against itself: pass the same vectors as queries and gallery")
    ks = sorted({int(k) for k in ks})
    seen = len(gallery) - leave_one_out
    if not ks or ks[0] < 1:
        raise PictagError(f"Recall@K needs K of at least 1, not {ks}")
    if ks[-1] > seen:
        raise PictagError(
            f"Recall@{ks[-1]} asks for more neighbours than the gallery's {seen} item(s): lower the K or add images"
        )
    names, codes = _label_codes(query_labels, gallery_labels)
    q_codes, g_codes = codes[: len(queries)], codes[len(queries) :]
    # R of each query: how many gallery items share its label (its own row excluded under leave-one-out).
    relevant = np.bincount(g_codes, minlength=len(names))[q_codes] - leave_one_out
    hits = {k: np.zeros(len(queries), dtype=bool) for k in ks}
    average_precision = np.zeros(len(queries))
    neighbours = np.zeros((len(queries), keep_top), dtype=np.int64) if keep_top else None
    start = 0
    while start < len(queries):
        depth = min(seen, max(ks[-1], keep_top, int(relevant[start : start + chunk].max(initial=0))))
        rows = max(1, min(chunk, CHUNK_BYTES // (BYTES_PER_RESULT * (depth + 1))))
        stop = min(start + rows, len(queries))
        depth = min(seen, max(ks[-1], keep_top, int(relevant[start:stop].max(initial=0))))
        _, found = faiss.knn(queries[start:stop], gallery, depth + leave_one_out, metric=faiss.METRIC_INNER_PRODUCT)
        if leave_one_out:
            found = _drop_self(found, np.arange(start, stop))
        correct = g_codes[found] == q_codes[start:stop, None]
        for k in ks:
            hits[k][start:stop] = correct[:, :k].any(axis=1)
        average_precision[start:stop] = _average_precision_at_r(correct, relevant[start:stop])
        if neighbours is not None:
            neighbours[start:stop] = found[:, :keep_top]
        start = stop
    answerable = relevant > 0
    # Counted with bincount: a loop over classes costs queries x classes (a minute at 100k each).
    counts = np.bincount(q_codes, minlength=len(names))
    per_k = {k: np.bincount(q_codes, weights=hits[k], minlength=len(names)) for k in ks}
    per_class = {
        str(names[c]): {"queries": int(counts[c]), **{k: float(per_k[k][c] / counts[c]) for k in ks}}
        for c in np.flatnonzero(counts)
    }
    return RetrievalMetrics(
        recall={k: float(hits[k].mean()) for k in ks},
        map_at_r=float(average_precision[answerable].mean()) if answerable.any() else 0.0,
        per_class=per_class,
        queries=len(queries),
        gallery=len(gallery),
        neighbours=neighbours,
    )


@dataclass
class Overlap:
    """How many queries have something to find: a gallery item of their label (besides themselves).

    Attributes:
        answerable: Queries whose label has at least one gallery item.
        queries: All queries.
        missing: Query labels without any gallery item, with their number of queries.
    """

    answerable: int
    queries: int
    missing: dict[str, int]


def overlap(query_labels: Sequence, gallery_labels: Sequence, *, leave_one_out: bool = False) -> Overlap:
    """Which queries can be answered at all; Recall@K counts the others as misses, and MAP@R leaves them out."""
    names, codes = _label_codes(query_labels, gallery_labels)
    q_codes, g_codes = codes[: len(query_labels)], codes[len(query_labels) :]
    relevant = np.bincount(g_codes, minlength=len(names))[q_codes] - leave_one_out
    counts = np.bincount(q_codes[relevant <= 0], minlength=len(names))
    missing = {str(names[c]): int(counts[c]) for c in np.flatnonzero(counts)}
    return Overlap(int((relevant > 0).sum()), len(q_codes), missing)


def _label_codes(query_labels: Sequence, gallery_labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(distinct labels, code of each query label then each gallery label); integer labels stay integers, since
    turning a million of them into strings costs more than the search of a small gallery."""
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    if q.dtype.kind not in "iu" or g.dtype.kind not in "iu":
        q, g = q.astype(str), g.astype(str)
    return np.unique(np.concatenate([q, g]), return_inverse=True)


def _vectors(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise PictagError(f"the {what} must be a non-empty (rows, dim) array, not shape {x.shape}")
    sample = np.linalg.norm(x[:: max(1, len(x) // 1000)], axis=1)
    if not np.allclose(sample, 1, atol=1e-2):
        raise PictagError(f"the {what} are not L2-normalised (norms {sample.min():.3g}..{sample.max():.3g}): normalise")
    return x


def _drop_self(found: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each row's results without the query's own position; when ties pushed it out, without the last result."""
    is_self = found == own[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    # A stable sort on the flag moves the query's own row to the end and keeps the order of the others.
    order = np.argsort(is_self, axis=1, kind="stable")
    return np.take_along_axis(found, order, axis=1)[:, :-1]


def _average_precision_at_r(correct: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP@R of each row: the mean, over the first R results, of precision at i where result i is correct."""
    ranks = np.arange(1, correct.shape[1] + 1, dtype=np.float32)
    within = ranks[None, :] <= relevant[:, None]
    counted = correct & within
    precision = np.cumsum(counted, axis=1, dtype=np.float32) / ranks  # float32 counts exactly up to 2**24
    return np.where(relevant > 0, (precision * counted).sum(axis=1) / np.maximum(relevant, 1), 0.0)
