"""Crash-safe output: one part file per unit of work, appearing whole or not at all.

A part is written to a temporary name unique to its attempt, synced, then renamed over its final name, so a unit
retried, or run twice at once, still leaves exactly one part, and a run killed at any instant leaves only complete
ones. A unit is done exactly when its part exists; a rerun computes the others. At the end a job merges the parts,
one at a time, into the file the user asked for (or keeps them, as an embedding store does).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pictag.errors import PictagError
from pictag.pipeline.plan import Unit

OUTPUT_FORMATS = (".csv", ".parquet")
ERRORS_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string())])
ERRORS_FOLDER = "errors.parts"


class PartStore:
    """The committed parts of a job, in a folder; errors of each unit go to a sub-folder of the same names.

    Args:
        folder: Where the parts go; created on `lock`.
        write_options: Extra `pyarrow.parquet.write_table` options for each part (compression, ...).
    """

    def __init__(self, folder: str | os.PathLike, write_options: dict | None = None):
        self.folder = Path(folder)
        self.errors_folder = self.folder / ERRORS_FOLDER
        self.write_options = write_options or {}
        self._lock: int | None = None

    def lock(self) -> None:
        """Keep other runs off this output until the process ends (a second one is refused at once).

        Raises:
            PictagError: another live process holds the output.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise PictagError(
                f"{self.folder} is being written by {holder}: wait for it, or choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._lock = fd  # released by `unlock`, or by the kernel when this process ends, however it ends

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def parts(self) -> list[Path]:
        """The committed parts, in plan order."""
        return sorted(self.folder.glob("part-*.parquet"))

    def pending(self, units: Sequence[Unit]) -> list[Unit]:
        """The units without a committed part."""
        done = {path.name for path in self.parts()}
        return [unit for unit in units if unit.part_name not in done]

    def commit(self, unit: Unit, rows: pa.Table, errors: pa.Table | None = None) -> None:
        """Commit a unit: its error rows first, then its part, whose appearance marks the unit done."""
        if errors is not None:
            self.errors_folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(errors, self.errors_folder / unit.part_name, {})
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(rows, self.folder / unit.part_name, self.write_options)

    def tables(self, errors: bool = False) -> Iterator[pa.Table]:
        """The committed parts (or their error rows), one table at a time: memory stays at one part."""
        if errors:
            done = {path.name for path in self.parts()}
            paths = sorted(p for p in self.errors_folder.glob("part-*.parquet") if p.name in done)
        else:
            paths = self.parts()
        for path in paths:
            yield pq.read_table(path)

    def rows(self, errors: bool = False) -> int:
        """Rows committed, read from the parts' footers."""
        folder = self.errors_folder if errors else self.folder
        done = {path.name for path in self.parts()}
        return sum(pq.read_metadata(p).num_rows for p in folder.glob("part-*.parquet") if p.name in done)

    def clear(self) -> None:
        """Remove every part and temporary file (a fresh start), keeping the folder and its lock."""
        for path in [*self.folder.glob("part-*"), *self.folder.glob(".part-*")]:
            path.unlink(missing_ok=True)
        shutil.rmtree(self.errors_folder, ignore_errors=True)

    def remove(self) -> None:
        """Remove the folder (after a merge)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomically(table: pa.Table, final: Path, options: dict) -> None:
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, **options)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


class TableWriter:
    """Streams tables into one CSV or Parquet file, chosen by the file's extension (any case)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format = output_format(self.path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == ".parquet":
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


def write_table(path: str | os.PathLike, tables: Iterable[pa.Table], schema: pa.Schema) -> tuple[Path, int]:
    """Stream tables into one CSV/Parquet file; returns its path and row count."""
    writer, rows = TableWriter(path), 0
    for table in tables:
        writer.write(table)
        rows += table.num_rows
    return writer.close(schema), rows


def output_format(path: str | os.PathLike) -> str:
    """ ".csv" or ".parquet", from the output's extension in any case.

    Raises:
        PictagError: an extension pictag cannot write.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise PictagError(f"output {path} must end in {' or '.join(OUTPUT_FORMATS)}")
    return suffix
