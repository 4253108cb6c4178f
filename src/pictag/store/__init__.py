"""Embedding stores: embed a collection once, then re-classify, search and calibrate without decoding it again.

Imported lazily, so that `pictag.store.options` does not load the store and its libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["EmbeddingStore", "Manifest"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'pictag.store' has no attribute {name!r}")
    return getattr(importlib.import_module("pictag.store.store"), name)


if TYPE_CHECKING:
    from pictag.store.store import EmbeddingStore, Manifest
