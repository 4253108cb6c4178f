"""The ground floor of pictag's outputs: files on a local disk or object storage, written whole, and locked.

Jobs, embedding stores, search indexes and training runs all write through it, and it imports nothing of theirs:

- `files`: where a file is (`open_location`: a local path, or an fsspec URL), atomic writes, fixable errors;
- `lock`: one writer per output (a POSIX record lock locally, a renewed lease on object storage);
- `parts`: `PartStore`, a folder of parts committed whole, one per unit of work, with the run's small files;
- `tables`: `TableWriter` and `write_table`, one CSV or Parquet output streamed into place.
"""

from pictag.storage.files import exists, open_location, record_beside
from pictag.storage.lock import LEASE_S, LOCK_FILE
from pictag.storage.parts import ERRORS_FOLDER, ERRORS_SCHEMA, PartStore, is_part
from pictag.storage.tables import OUTPUT_FORMATS, TableWriter, output_format, write_table

__all__ = [
    "ERRORS_FOLDER",
    "ERRORS_SCHEMA",
    "LEASE_S",
    "LOCK_FILE",
    "OUTPUT_FORMATS",
    "PartStore",
    "TableWriter",
    "exists",
    "is_part",
    "open_location",
    "output_format",
    "record_beside",
    "write_table",
]
