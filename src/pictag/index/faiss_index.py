"""Faiss indexes over an embedding store, built by streaming its shards, with search parameters tuned by measuring.

Vectors are L2-normalised, so inner product is cosine similarity. Row i of the store is id i of the index.
Approximate indexes are tuned honestly: after building, queries drawn from the store (and the same queries pushed
off the data, as real queries are) are searched exactly and approximately, and the smallest nprobe (IVF) or
efSearch (HNSW) whose recall@10 reaches the target on both sets is kept.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pictag.errors import PictagError

if TYPE_CHECKING:
    from pictag.store.store import EmbeddingStore

INDEX_FILE, INFO_FILE = "index.faiss", "index.json"
# From this many vectors an exact scan costs tens of ms per query and gigabytes of float32: go approximate.
APPROXIMATE_FROM = 1_000_000
CHUNK_ROWS = 65536
TUNING_MARGIN = 0.01


def _faiss():
    try:
        import faiss
    except ImportError:
        raise PictagError("search needs Faiss: pip install 'pictag[index]' (faiss-cpu)") from None
    return faiss


@dataclass
class IndexInfo:
    """What was built, with which parameters, and the recall it measured."""

    type: str
    count: int
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_10: float | None = None
    target_recall: float | None = None
    build_seconds: float = 0.0
    reason: str = ""
    store_model: str = ""
    store_weights_id: str = ""


@dataclass
class VectorIndex:
    """A Faiss index and its description; `search` applies the tuned search parameter."""

    index: Any
    info: IndexInfo

    def set_search_param(self, value: int | None) -> None:
        """nprobe for IVF, efSearch for HNSW; nothing for flat."""
        if value is None or self.info.type == "flat":
            return
        _SEARCH_PARAMS[self.info.type](self.index, value)
        self.info.params[_PARAM_NAMES[self.info.type]] = value

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest vectors to each (normalised, float32) query row, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.info.dim)
        return self.index.search(queries, min(k, self.info.count))

    def save(self, folder: str | os.PathLike) -> str:
        """Save beside the store in `folder` (a local folder or fsspec URL); returns where the index went."""
        from pictag.storage.files import atomic_path, writing
        from pictag.storage.parts import PartStore

        faiss = _faiss()
        files = PartStore(folder)
        if files.fs is None:  # Faiss writes the file itself: no copy of a large index in memory
            with writing(files.location), atomic_path(files.url(INDEX_FILE)) as tmp:
                faiss.write_index(self.index, tmp)
        else:  # Faiss cannot write to object storage: serialised in memory, then one PUT
            files.write_bytes(INDEX_FILE, faiss.serialize_index(self.index).tobytes())
        files.write_bytes(INFO_FILE, (json.dumps(asdict(self.info), indent=2) + "\n").encode())
        return files.url(INDEX_FILE)

    @classmethod
    def load(cls, store: EmbeddingStore) -> VectorIndex | None:
        """The index saved beside a store, or None; refused if the store changed since it was built."""
        files = store.files
        path, info_path = files.url(INDEX_FILE), files.url(INFO_FILE)
        if not files.exists(INDEX_FILE) or not files.exists(INFO_FILE):
            return None
        rebuild = f"rebuild it with `pictag index-embeddings {store.folder}`"
        try:
            values = json.loads(files.read_bytes(INFO_FILE))
            info = IndexInfo(**values)
            if not (isinstance(info.count, int) and isinstance(info.dim, int) and info.type in INDEX_TYPES):
                raise TypeError("bad count, dim or type")
        except (ValueError, TypeError, RecursionError) as exc:  # not JSON, not an object, fields missing or wrong
            raise PictagError(
                f"{info_path} is not a search index description ({type(exc).__name__}): {rebuild}"
            ) from None
        m = store.manifest
        if (info.count, info.store_model, info.store_weights_id) != (m.count, m.model, m.weights_id):
            raise PictagError(
                f"the search index in {store.folder} was built for {info.count:,} vectors of {info.store_model}, the "
                f"store now holds {m.count:,} of {m.model}: rebuild it with `pictag index-embeddings {store.folder}`"
            )
        faiss = _faiss()
        try:
            if files.fs is None:  # Faiss opens local files itself, and memory-maps a flat index instead of reading it
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP if info.type == "flat" else 0)
            else:  # it cannot open a URL: the bytes are fetched whole, then deserialised
                index = faiss.deserialize_index(np.frombuffer(files.read_bytes(INDEX_FILE), np.uint8))
        except RuntimeError as exc:  # Faiss reports every unreadable file this way, with a C++ trace in the message
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise PictagError(f"{path} is not a readable Faiss index ({reason[:200]}): {rebuild}") from None
        if (index.ntotal, index.d) != (info.count, info.dim):
            raise PictagError(
                f"{path} holds {index.ntotal:,} vectors of {index.d} dimensions, {INFO_FILE} says {info.count:,} "
                f"of {info.dim}: {rebuild}"
            )
        loaded = cls(index, info)
        loaded.set_search_param(info.params.get(_PARAM_NAMES.get(info.type, ""), None))
        return loaded


def choose_type(count: int) -> tuple[str, str]:
    """The index type for `count` vectors under --index-type auto, and why."""
    if count < APPROXIMATE_FROM:
        return "flat", f"exact (flat): {count:,} vectors < {APPROXIMATE_FROM:,}, a full scan is fast enough"
    return "ivf", (
        f"approximate (IVF, fp16 vectors): {count:,} vectors >= {APPROXIMATE_FROM:,}; IVF builds in minutes on a "
        "CPU where HNSW takes much longer, and its recall is tuned by nprobe"
    )


def _build_flat(store: EmbeddingStore, params: dict, progress: Callable[[int], None]):
    faiss = _faiss()
    index = faiss.IndexFlatIP(store.dim)
    _add_all(index, store, progress)
    return index, {}


def default_nlist(count: int) -> int:
    """Inverted lists: about sqrt(N) rounded to a power of two, between 16 and 65536 (and >= 39 vectors per list)."""
    target = 2 ** round(math.log2(max(math.sqrt(count), 1)))
    return int(max(1, min(target, 65536, count // 39)))


def _build_ivf(store: EmbeddingStore, params: dict, progress: Callable[[int], None]):
    faiss = _faiss()
    nlist = params.get("nlist") or default_nlist(len(store))
    quantizer = faiss.IndexFlatIP(store.dim)
    # fp16 codes hold the store's fp16 vectors exactly, in half the memory of IVF-Flat.
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, store.dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.train(_sample(store, min(len(store), 64 * nlist))[1])
    _add_all(index, store, progress)
    return index, {"nlist": nlist}


def _build_hnsw(store: EmbeddingStore, params: dict, progress: Callable[[int], None]):
    faiss = _faiss()
    m = params.get("m") or 32
    index = faiss.IndexHNSWFlat(store.dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.get("ef_construction") or 80
    _add_all(index, store, progress)
    return index, {"m": m, "ef_construction": index.hnsw.efConstruction}


def _set_nprobe(index, value: int) -> None:
    index.nprobe = value


def _set_ef_search(index, value: int) -> None:
    index.hnsw.efSearch = value


INDEX_TYPES: dict[str, Callable] = {"flat": _build_flat, "ivf": _build_ivf, "hnsw": _build_hnsw}
_SEARCH_PARAMS = {"ivf": _set_nprobe, "hnsw": _set_ef_search}
_PARAM_NAMES = {"ivf": "nprobe", "hnsw": "ef_search"}
_SWEEPS = {"ivf": [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512], "hnsw": [16, 32, 48, 64, 96, 128, 256, 512]}


def build_index(
    store: EmbeddingStore,
    index_type: str = "auto",
    *,
    nlist: int | None = None,
    m: int | None = None,
    search_param: int | None = None,
    target_recall: float = 0.95,
    tuning_queries: int = 500,
    progress: Callable[[int], None] = lambda n: None,
) -> VectorIndex:
    """Build a Faiss index of every vector in a store.

    Args:
        store: The embedding store.
        index_type: "auto" (flat below 1M vectors, IVF from 1M), "flat", "ivf" or "hnsw".
        nlist: IVF inverted lists (default about sqrt(N)).
        m: HNSW neighbours per node (default 32).
        search_param: nprobe (IVF) or efSearch (HNSW) to use instead of tuning for `target_recall`.
        target_recall: Recall@10 against exact search that tuning must reach.
        tuning_queries: Store vectors used as queries to measure recall.
        progress: Called with the number of vectors added after each chunk.
    """
    started = time.perf_counter()
    reason = f"{index_type} (asked for)"
    if index_type == "auto":
        index_type, reason = choose_type(len(store))
    if index_type not in INDEX_TYPES:
        raise PictagError(f"--index-type must be auto or one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
    if len(store) == 0:
        raise PictagError(f"embedding store {store.folder} is empty: nothing to index")
    index, params = INDEX_TYPES[index_type](store, {"nlist": nlist, "m": m}, progress)
    info = IndexInfo(
        index_type,
        len(store),
        store.dim,
        params,
        target_recall=target_recall,
        reason=reason,
        store_model=store.manifest.model,
        store_weights_id=store.manifest.weights_id,
    )
    built = VectorIndex(index, info)
    if index_type == "flat":
        info.recall_at_10 = 1.0
    else:
        rows, stored = _sample(store, min(tuning_queries, len(store)), seed=1)
        off_data = _perturbed(stored, seed=2)
        exact_stored = _without_self(exact_search(store, stored, 11)[1], rows)
        exact_off = exact_search(store, off_data, 10)[1]
        for value in [search_param] if search_param is not None else _SWEEPS[index_type]:
            built.set_search_param(value)
            info.recall_at_10 = min(
                recall_at_k(_without_self(built.search(stored, 11)[1], rows), exact_stored),
                recall_at_k(built.search(off_data, 10)[1], exact_off),
            )
            # A small margin, so that the recall of new queries (not these 2 x 500) still reaches the target.
            if info.recall_at_10 >= min(target_recall + TUNING_MARGIN, 1.0):
                break
    info.build_seconds = time.perf_counter() - started
    return built


def exact_search(store: EmbeddingStore, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact (scores, ids) of the k best store rows per query, scanning the store chunk by chunk."""
    import torch

    from pictag.store.store import as_float32_tensor

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_scores = torch.full((len(q), 0), -math.inf)
    best_ids = torch.empty((len(q), 0), dtype=torch.int64)
    offset = 0
    for _, vectors in store.iter_arrays(CHUNK_ROWS):
        sims = q @ as_float32_tensor(vectors).T
        scores = torch.cat([best_scores, sims], dim=1)
        ids = torch.cat([best_ids, torch.arange(offset, offset + len(vectors)).expand(len(q), -1)], dim=1)
        best_scores, top = scores.topk(min(k, scores.shape[1]), dim=1)
        best_ids = ids.gather(1, top)
        offset += len(vectors)
    return best_scores.numpy(), best_ids.numpy()


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` ids that appear in the same row of `found`."""
    hits = [len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def _perturbed(vectors: np.ndarray, seed: int, cosine: float = 0.3) -> np.ndarray:
    """Queries pushed off the data: random directions at `cosine` to a store vector (CLIP text-image level).

    Queries that are store vectors sit inside their cluster and overstate recall; real queries (a text, a new
    photo) fall between clusters, so tuning must also pass on these.
    """
    noise = np.random.default_rng(seed).standard_normal(vectors.shape).astype(np.float32)
    noise -= (noise * vectors).sum(axis=1, keepdims=True) * vectors
    noise *= math.sqrt(1 / cosine**2 - 1) / np.linalg.norm(noise, axis=1, keepdims=True)
    mixed = vectors + noise
    return mixed / np.linalg.norm(mixed, axis=1, keepdims=True)


def _without_self(ids: np.ndarray, rows: np.ndarray, k: int = 10) -> np.ndarray:
    """The first k ids of each row other than the query's own row (tuning queries are store vectors)."""
    return np.stack([row[row != own][:k] for row, own in zip(ids, rows)])


def _sample(store: EmbeddingStore, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, vectors as float32) of `n` store rows chosen uniformly at random, read in one pass."""
    rows = np.sort(np.random.default_rng(seed).choice(len(store), size=n, replace=False))
    out = np.empty((n, store.dim), np.float32)
    filled = offset = 0
    for _, vectors in store.iter_arrays(CHUNK_ROWS):
        mine = rows[(rows >= offset) & (rows < offset + len(vectors))] - offset
        out[filled : filled + len(mine)] = vectors[mine]
        filled += len(mine)
        offset += len(vectors)
    return rows, out


def _add_all(index, store: EmbeddingStore, progress: Callable[[int], None]) -> None:
    for _, vectors in store.iter_arrays(CHUNK_ROWS):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        progress(len(vectors))
