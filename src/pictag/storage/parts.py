"""Crash-safe output: one part file per unit of work, appearing whole or not at all, on local paths or fsspec URLs.

A part is written to a temporary name unique to its attempt, synced, then renamed over its final name, so a unit
retried, or run twice at once, still leaves exactly one part, and a run killed at any instant leaves only complete
ones. On object storage (``s3://``, ``gs://``, ``memory://`` ...) a part is one PUT of the whole file, which the
store makes visible whole or not at all. A unit is done exactly when its part exists; a rerun computes the others.
At the end a job merges the parts, one at a time, into the file the user asked for (or keeps them, as an embedding
store does).

Every write failure the user can fix (a read-only file system, a full disk, no permission) is one line naming the
fix; parts committed before it stay, so ``--resume`` continues from them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pictag.storage.files import atomic_file, delete, makedirs, open_location, rmtree, writing
from pictag.storage.lock import FolderLock

ERRORS_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string())])
ERRORS_FOLDER = "errors.parts"


class Unit(Protocol):
    """What a part is committed for: a unit of work (`pictag.pipeline.plan.Unit`), known here by its part's name."""

    @property
    def part_name(self) -> str: ...


U = TypeVar("U", bound=Unit)


class PartStore:
    """The committed parts of a job, in a folder; errors of each unit go to a sub-folder of the same names.

    Args:
        folder: Where the parts go: a local folder or an fsspec URL (the nodes of a cluster must all reach it).
        write_options: Extra `pyarrow.parquet.write_table` options for each part (compression, ...).
    """

    def __init__(self, folder: str | os.PathLike, write_options: dict | None = None):
        self.location = os.fspath(folder)
        self.fs, self.root = open_location(folder)
        # A Path for local folders (what callers join names to); the URL itself on object storage.
        self.folder: Path | str = Path(self.root) if self.fs is None else self.location
        self.write_options = write_options or {}
        self._lock = FolderLock(self.fs, self.root, self.location, self.folder)

    def __reduce__(self):
        # Travels to Ray actors as its location; the lock stays with the driver that took it.
        return (PartStore, (self.location, self.write_options))

    @property
    def errors_folder(self) -> Path | str:
        return self._path(ERRORS_FOLDER) if self.fs is None else f"{self.location}/{ERRORS_FOLDER}"

    def _path(self, *names: str) -> str:
        return "/".join([self.root.rstrip("/"), *names])

    def url(self, name: str) -> str:
        """How a file of this folder is named to the user."""
        return self._path(name) if self.fs is None else f"{self.location.rstrip('/')}/{name}"

    # -- the lock ----------------------------------------------------------------------------------------------

    def lock(self) -> None:
        """Keep other runs off this output until the process ends (a second one is refused at once).

        A POSIX record lock locally, a lease renewed on each commit on object storage: see `FolderLock.take`.

        Raises:
            PictagError: another live process (or this one, through another `PartStore`) holds the output, or the
                folder cannot be written.
        """
        self._lock.take()

    def renew_lock(self) -> None:
        """Renew the lease on object storage (at most every third of its length); nothing locally."""
        self._lock.renew()

    def unlock(self) -> None:
        self._lock.release()

    # -- parts -------------------------------------------------------------------------------------------------

    def makedirs(self) -> None:
        makedirs(self.fs, self.root)

    def _list(self, folder: str) -> list[str]:
        """File names in `folder` (of this store), sorted; none when it does not exist (or is a file)."""
        if self.fs is None:
            try:
                return sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False))
        except FileNotFoundError:
            return []

    def names(self) -> list[str]:
        """Every name in the folder, sorted (none when it does not exist)."""
        return self._list(self.root)

    def sizes(self) -> dict[str, int]:
        """The size of every file in the folder, from one listing (one request on object storage)."""
        if self.fs is None:
            try:
                with os.scandir(self.root) as entries:
                    return {e.name: e.stat().st_size for e in entries if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                return {}
        try:
            listed = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["size"] for e in listed if e["type"] == "file"}

    def tails(self, sizes: dict[str, int], length: int) -> dict[str, bytes]:
        """The last `length` bytes of each named file of the given size.

        On object storage they are one batch of ranged reads, which s3fs and gcsfs send at once: opening a store of
        thousands of shards reads their footers in one round trip instead of two requests after another per shard.
        """
        names = list(sizes)
        starts = [max(0, sizes[name] - length) for name in names]
        if self.fs is None:
            found = []
            for name, start in zip(names, starts, strict=True):
                with open(self._path(name), "rb") as f:
                    found.append(os.pread(f.fileno(), sizes[name] - start, start))
        else:
            paths = [self._path(name) for name in names]
            found = self.fs.cat_ranges(paths, starts, [sizes[name] for name in names], on_error="return")
            for blob in found:
                if isinstance(blob, Exception):
                    raise blob
        return dict(zip(names, found, strict=True))

    def part_names(self, errors: bool = False) -> list[str]:
        """Names of the committed parts (or of their error files), in plan order."""
        folder = self._path(ERRORS_FOLDER) if errors else self.root
        return [n for n in self._list(folder) if is_part(n)]

    def temporaries(self) -> list[str]:
        """Temporary files of attempts that never finished (a killed process leaves them; nothing reads them)."""
        found = [n for n in self._list(self.root) if n.startswith(".part-") and n.endswith(".tmp")]
        found += [f"{ERRORS_FOLDER}/{n}" for n in self._list(self._path(ERRORS_FOLDER)) if n.endswith(".tmp")]
        return found

    def pending(self, units: Sequence[U]) -> list[U]:
        """The units without a committed part."""
        done = set(self.part_names())
        return [unit for unit in units if unit.part_name not in done]

    def commit(self, unit: Unit, rows: pa.Table, errors: pa.Table | None = None) -> None:
        """Commit a unit: its error rows first, then its part, whose appearance marks the unit done.

        Raises:
            PictagError: the output cannot be written (read-only, full, no permission); committed parts stay.
        """
        with writing(self.location):
            if errors is not None:
                self._write(errors, ERRORS_FOLDER, unit.part_name, {})
            self._write(rows, None, unit.part_name, self.write_options)
        self.renew_lock()

    def write_part(self, name: str, table: pa.Table) -> None:
        """Write a part whole under a name of the caller's (`write_store`'s shards, made outside a job).

        Raises:
            PictagError: the output cannot be written (read-only, full, no permission).
        """
        with writing(self.location):
            self._write(table, None, name, self.write_options)

    def _write(self, table: pa.Table, sub: str | None, name: str, options: dict) -> None:
        folder = self._path(sub) if sub else self.root
        if self.fs is not None:
            buffer = io.BytesIO()
            pq.write_table(table, buffer, **options)
            self.fs.makedirs(folder, exist_ok=True)
            self.fs.pipe_file(f"{folder}/{name}", buffer.getvalue())  # one PUT: the object appears whole
            return
        os.makedirs(folder, exist_ok=True)
        with atomic_file(f"{folder}/{name}") as f:
            pq.write_table(table, f, **options)

    def open(self, name: str):
        """A file of the folder, to read: memory-mapped locally; on object storage an fsspec file (ranged reads)."""
        return self._open(self._path(name))

    def _open(self, path: str):
        # A memory map reads Parquet pages without a copy into Python, as `pq.ParquetFile(path, memory_map=True)`.
        return pa.memory_map(path) if self.fs is None else self.fs.open(path, "rb")

    def tables(self, errors: bool = False) -> Iterator[pa.Table]:
        """The committed parts (or their error rows), one table at a time: memory stays at one part."""
        names = self.part_names()
        if errors:
            done = set(names)
            folder = self._path(ERRORS_FOLDER)
            paths = [f"{folder}/{n}" for n in self.part_names(errors=True) if n in done]
        else:
            paths = [self._path(n) for n in names]
        for path in paths:
            with self._open(path) as f:
                yield pq.read_table(f)

    def rows(self, errors: bool = False) -> int:
        """Rows committed, read from the parts' footers."""
        done = set(self.part_names())
        names = [n for n in self.part_names(errors) if n in done]
        folder = self._path(ERRORS_FOLDER) if errors else self.root
        total = 0
        for name in names:
            with self._open(f"{folder}/{name}") as f:
                total += pq.read_metadata(f).num_rows
        return total

    # -- small files of the run (run.yaml, _plan.parquet, _manifest.parquet) -------------------------------------

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name)) if self.fs is None else self.fs.isfile(self._path(name))

    def read_bytes(self, name: str) -> bytes:
        if self.fs is None:
            return Path(self._path(name)).read_bytes()
        return self.fs.cat_file(self._path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a small file of the run whole (temporary name, sync and rename locally; one PUT on object storage)."""
        with writing(self.location):
            if self.fs is not None:
                self.fs.pipe_file(self._path(name), data)
                return
            with atomic_file(self._path(name)) as f:
                f.write(data)

    def delete(self, name: str) -> None:
        delete(self.fs, self._path(name))

    def clear(self) -> None:
        """Remove every part and temporary file (a fresh start), keeping the folder and its lock."""
        for name in self._list(self.root):
            if name.startswith(("part-", ".part-")):
                self.delete(name)
        self.remove_errors()

    def remove_errors(self) -> None:
        """Remove the per-unit error files (after they were merged)."""
        rmtree(self.fs, self._path(ERRORS_FOLDER))

    def remove(self) -> None:
        """Remove the folder (after a merge)."""
        rmtree(self.fs, self.root)


def is_part(name: str) -> bool:
    """Whether a file name is a committed part's."""
    return name.startswith("part-") and name.endswith(".parquet")
