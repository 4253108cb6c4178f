"""Data sources: ``open_source`` and the records, shards and tar indexes behind it."""

from pictag.data.sources import Record, Shard, Source, open_source
from pictag.data.tar_index import build_tar_index

__all__ = ["Record", "Shard", "Source", "build_tar_index", "open_source"]
