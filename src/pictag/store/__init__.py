"""Embedding stores: embed a collection once, then re-classify, search and calibrate without decoding it again."""

from pictag.store.store import EmbeddingStore, Manifest

__all__ = ["EmbeddingStore", "Manifest"]
