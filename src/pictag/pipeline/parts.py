"""Crash-safe streaming output: rows go to numbered part files that appear whole or not at all.

A run killed at any instant leaves only complete parts; resuming skips every key they hold, so each record ends up
in the output exactly once. At the end the parts are merged, one at a time, into the file the user asked for.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pictag.errors import PictagError

OUTPUT_FORMATS = (".csv", ".parquet")


class PartWriter:
    """Buffers rows and commits them as `part-NNNNNN.parquet` files in a folder.

    Args:
        folder: Where the parts go; created if needed.
        rows_per_part: Commit once this many rows are buffered.
        seconds_per_part: ... or once the oldest buffered row is this old, so a slow run still saves progress.
        write_options: Extra `pyarrow.parquet.write_table` options for each part (compression, ...).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        rows_per_part: int = 8192,
        seconds_per_part: float = 30.0,
        write_options: dict | None = None,
    ):
        self.folder = Path(folder)
        self.write_options = write_options or {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._since = time.monotonic()
        self._next = len(self.parts())

    def parts(self) -> list[Path]:
        """The committed parts, in the order they were written."""
        return sorted(self.folder.glob("part-*.parquet"))

    def done_keys(self) -> set[str]:
        """Every key in a committed part (reads only the key column)."""
        keys: set[str] = set()
        for part in self.parts():
            keys.update(pq.read_table(part, columns=["key"]).column("key").to_pylist())
        return keys

    def write(self, table: pa.Table) -> None:
        """Add rows; they are committed when the buffer is full or old enough."""
        if not self._buffer:
            self._since = time.monotonic()
        self._buffer.append(table)
        self._rows += table.num_rows
        if self._rows >= self.rows_per_part or time.monotonic() - self._since >= self.seconds_per_part:
            self.flush()

    def flush(self) -> None:
        """Commit the buffered rows as one part: written to a temporary name, synced, then renamed."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer, promote_options="default")
        final = self.folder / f"part-{self._next:06d}.parquet"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pq.write_table(table, f, **self.write_options)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._next += 1
        self._buffer, self._rows = [], 0

    def tables(self) -> Iterator[pa.Table]:
        """The committed parts, one table at a time (memory stays at one part)."""
        for part in self.parts():
            yield pq.read_table(part)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class TableWriter:
    """Streams tables into one CSV or Parquet file, chosen by the file's extension."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check_output_format(self.path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.suffix == ".parquet":
                self._writer = pq.ParquetWriter(self._tmp, table.schema)
            else:
                self._writer = pacsv.CSVWriter(self._tmp, table.schema)
        self._writer.write_table(table)

    def close(self, schema: pa.Schema) -> Path:
        """Finish the file (an empty one with `schema`'s header if nothing was written) and move it into place."""
        if self._writer is None:
            self.write(schema.empty_table())
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path


def check_output_format(path: str | os.PathLike) -> None:
    """Refuse output names whose format pictag cannot write."""
    if Path(path).suffix.lower() not in OUTPUT_FORMATS:
        raise PictagError(f"output {path} must end in {' or '.join(OUTPUT_FORMATS)}")
