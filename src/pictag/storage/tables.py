"""One CSV or Parquet file, streamed table by table, that appears whole when it is closed (local or fsspec URL)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pictag.errors import PictagError
from pictag.storage.files import commit, is_dir, open_location, writing

OUTPUT_FORMATS = (".csv", ".parquet")


class TableWriter:
    """Streams tables into one CSV or Parquet file (local or fsspec URL), chosen by its extension (any case).

    Locally the file is written under a temporary name (``OUT.tmp``, which `pictag verify` looks for), synced and
    renamed at `close`; on object storage it is one (multipart) upload, which the store makes visible at `close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.location = os.fspath(path)
        self.format = output_format(self.location)
        self.fs, self._target = open_location(self.location)
        self.path: Path | str = Path(self._target) if self.fs is None else self.location
        self._tmp = self._target + ".tmp" if self.fs is None else self._target
        self._file = None
        self._writer = None

    def write(self, table: pa.Table) -> None:
        with writing(self.location):
            if self._writer is None:
                if self.fs is None:
                    os.makedirs(os.path.dirname(self._tmp) or ".", exist_ok=True)
                    self._file = open(self._tmp, "wb")
                else:
                    self._file = self.fs.open(self._tmp, "wb")
                if self.format == ".parquet":
                    self._writer = pq.ParquetWriter(self._file, table.schema)
                else:
                    self._writer = pacsv.CSVWriter(self._file, table.schema)
            self._writer.write_table(table)

    def close(self, schema: pa.Schema) -> Path | str:
        """Finish the file (an empty one with `schema`'s header if nothing was written) and move it into place."""
        if self._writer is None:
            self.write(schema.empty_table())
        with writing(self.location):
            self._writer.close()
            self._file.close()
            if self.fs is None:
                commit(self._tmp, self._target)
        return self.path


def write_table(path: str | os.PathLike, tables: Iterable[pa.Table], schema: pa.Schema) -> tuple[Path | str, int]:
    """Stream tables into one CSV/Parquet file; returns its path (a URL on object storage) and row count."""
    writer, rows = TableWriter(path), 0
    for table in tables:
        writer.write(table)
        rows += table.num_rows
    return writer.close(schema), rows


def output_format(path: str | os.PathLike) -> str:
    """ ".csv" or ".parquet", from the output's extension in any case; checked before any work is done.

    Raises:
        PictagError: an extension pictag cannot write, or an output that is an existing folder.
    """
    location = os.fspath(path)
    suffix = os.path.splitext(location)[1].lower()
    if suffix not in OUTPUT_FORMATS:
        raise PictagError(f"output {location} must end in {' or '.join(OUTPUT_FORMATS)}")
    if is_dir(location):
        raise PictagError(
            f"output {location} is a folder: name a file in it, e.g. {location.rstrip('/')}/results{suffix}"
        )
    return suffix
