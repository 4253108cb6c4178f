"""Data sources: ``open_source`` and the records, shards and tar indexes behind it.

Imported lazily, so that a light module of this package (`pictag.data.options`, `pictag.data.limits`) does not load
the sources and their libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "Record": "pictag.data.sources",
    "Shard": "pictag.data.sources",
    "Source": "pictag.data.sources",
    "open_source": "pictag.data.sources",
    "build_tar_index": "pictag.data.tar_index",
}

__all__ = ["Record", "Shard", "Source", "build_tar_index", "open_source"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pictag.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


if TYPE_CHECKING:
    from pictag.data.sources import Record, Shard, Source, open_source
    from pictag.data.tar_index import build_tar_index
