"""The feature stage of a job over an embedding store: its shards are the units, its vectors the features."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from pictag.pipeline.plan import Unit
from pictag.pipeline.runner import EmbeddingBatch
from pictag.store.store import READ_ROWS, EmbeddingStore, as_float32_tensor


def store_units(store: EmbeddingStore) -> list[Unit]:
    """The store's shards as units of work, so a job over the store commits and resumes like one over images."""
    return [Unit(i, name, None, rows) for i, (name, rows) in enumerate(store.shard_rows().items())]


class StoreFeatures:
    """The feature stage of a job over a store: its vectors, read shard by shard, with nothing decoded.

    Batches of 8192 rows: 1,000 labels' logits (32 MB) about fit a server's L3 cache for the top-k and softmax
    passes, while batches are few enough that per-batch thread synchronisation stays small (smaller batches measured
    up to 2x slower on a busy 2-core machine). Reads stay at 64k rows.
    """

    batch_rows = 8192

    def __init__(self, store: EmbeddingStore):
        self.store = store

    def batches(self, units: Sequence[Unit], workers: int, stats: dict[str, float]) -> Iterator[EmbeddingBatch]:
        for unit in units:
            for keys, embeddings in self.store.iter_arrays(READ_ROWS, [unit.id]):
                for start in range(0, len(keys), self.batch_rows):
                    piece = keys[start : start + self.batch_rows].to_pylist()
                    features = as_float32_tensor(embeddings[start : start + self.batch_rows])
                    yield EmbeddingBatch(piece, features, [], units=[unit.ordinal] * len(piece))
            yield EmbeddingBatch([], torch.empty(0, self.store.dim), [], finished=[unit.ordinal])
