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

import errno
import fcntl
import io
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pictag.data._io import is_url
from pictag.errors import PictagError
from pictag.pipeline.plan import Unit

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

OUTPUT_FORMATS = (".csv", ".parquet")
ERRORS_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string())])
ERRORS_FOLDER = "errors.parts"
LOCK_FILE = ".lock"
# Object storage has no flock: the lock there is a lease that its holder renews while it commits; one older than
# this is taken to be left by a dead driver. Long enough for a slow model between commits, short enough to resume.
LEASE_S = 120.0
# The lock files this process holds (real path: descriptor); see `PartStore.lock`.
_HELD: dict[str, int] = {}


def open_location(location: str | os.PathLike) -> tuple[AbstractFileSystem | None, str]:
    """(fsspec filesystem, path) for a URL, or (None, path) for a local path or ``file://`` URL (os calls, fsync)."""
    text = os.fspath(location)
    if not is_url(text):
        return None, text
    if text.startswith("file://"):
        return None, text[len("file://") :]
    from pictag.data._io import filesystem

    fs, path = filesystem(text)
    return fs, path


def record_beside(out: str | os.PathLike, suffix: str) -> tuple[str, str]:
    """(folder, file name) of a record kept beside a file output: ("runs", "r.plan.parquet") for runs/r.csv."""
    text = os.fspath(out).rstrip("/")
    folder, _, name = text.rpartition("/")
    stem, dot, _ = name.rpartition(".")
    return folder or ".", (stem if dot else name) + suffix


def exists(location: str | os.PathLike) -> bool:
    """Whether a file or folder is at a local path or fsspec URL."""
    fs, path = open_location(location)
    return os.path.exists(path) if fs is None else fs.exists(path)


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
        self._lock: str | None = None
        self._lease: float | None = None

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

        Locally this is a POSIX record lock (`lockf`), which belongs to this process alone: unlike `flock`, the
        DataLoader workers it forks do not inherit it, so a run killed with -9 frees its output at once, even while
        its orphaned workers live on, and `--resume` right after is accepted. The kernel releases it however the
        process ends. On object storage it is a lease file naming its holder, renewed on each commit; a lease
        older than `LEASE_S` is taken over.

        Raises:
            PictagError: another live process (or this one, through another `PartStore`) holds the output, or the
                folder cannot be written.
        """
        with _writing(self.location):
            self.makedirs()
            if self.fs is not None:
                return self._take_lease()
            path = os.path.realpath(self._path(LOCK_FILE))
            # A process's POSIX locks never conflict with each other, and closing any descriptor of the file drops
            # them: a second lock in this process is refused here, before the file is opened again.
            if path in _HELD:
                raise PictagError(f"{self.folder} is being written by pid {os.getpid()} (this process)")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise PictagError(
                f"{self.folder} is being written by {holder}: wait for it, or choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        _HELD[path] = fd
        self._lock = path  # released by `unlock`, or by the kernel when this process ends, however it ends

    def _take_lease(self) -> None:
        # Not atomic (fsspec has no portable conditional create): two drivers starting in the same second can
        # both get it. docs/scale-out.md says so; parts stay exactly-once regardless, by their names.
        path = self._path(LOCK_FILE)
        if self.fs.exists(path):
            text = self.fs.cat_file(path).decode(errors="replace")
            holder, _, stamp = text.rpartition(" at ")
            try:
                age = time.time() - float(stamp)
            except ValueError:
                age = LEASE_S
            if age < LEASE_S:
                raise PictagError(
                    f"{self.location} is being written by {holder or 'another driver'} (lease renewed {age:.0f} s "
                    f"ago): wait for it, or, if it died, retry after {LEASE_S - age:.0f} s"
                )
        self._lease = 0.0
        self.renew_lock()

    def renew_lock(self) -> None:
        """Renew the lease on object storage (at most every third of `LEASE_S`); nothing locally."""
        if self.fs is None or self._lease is None or time.time() - self._lease < LEASE_S / 3:
            return
        self._lease = time.time()
        text = f"pid {os.getpid()} on {socket.gethostname()} at {self._lease}"
        with _writing(self.location):
            self.fs.pipe_file(self._path(LOCK_FILE), text.encode())

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(_HELD.pop(self._lock))
            self._lock = None
        if self._lease is not None:
            self._lease = None
            self.delete(LOCK_FILE)  # gone already when the folder was removed after a merge

    # -- parts -------------------------------------------------------------------------------------------------

    def makedirs(self) -> None:
        if self.fs is None:
            os.makedirs(self.root, exist_ok=True)
        else:
            self.fs.makedirs(self.root, exist_ok=True)

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

    def pending(self, units: Sequence[Unit]) -> list[Unit]:
        """The units without a committed part."""
        done = set(self.part_names())
        return [unit for unit in units if unit.part_name not in done]

    def commit(self, unit: Unit, rows: pa.Table, errors: pa.Table | None = None) -> None:
        """Commit a unit: its error rows first, then its part, whose appearance marks the unit done.

        Raises:
            PictagError: the output cannot be written (read-only, full, no permission); committed parts stay.
        """
        with _writing(self.location):
            if errors is not None:
                self._write(errors, ERRORS_FOLDER, unit.part_name, {})
            self._write(rows, None, unit.part_name, self.write_options)
        self.renew_lock()

    def write_part(self, name: str, table: pa.Table) -> None:
        """Write a part whole under a name of the caller's (`write_store`'s shards, made outside a job).

        Raises:
            PictagError: the output cannot be written (read-only, full, no permission).
        """
        with _writing(self.location):
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
        tmp = f"{folder}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, **options)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, f"{folder}/{name}")
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

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
        """Write a small file of the run whole (temporary name and rename locally; one PUT on object storage)."""
        with _writing(self.location):
            if self.fs is not None:
                self.fs.pipe_file(self._path(name), data)
                return
            tmp = self._path(f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(name))

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name)) if self.fs is None else self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass

    def clear(self) -> None:
        """Remove every part and temporary file (a fresh start), keeping the folder and its lock."""
        for name in self._list(self.root):
            if name.startswith(("part-", ".part-")):
                self.delete(name)
        self.remove_errors()

    def remove_errors(self) -> None:
        """Remove the per-unit error files (after they were merged)."""
        _rmtree(self.fs, self._path(ERRORS_FOLDER))

    def remove(self) -> None:
        """Remove the folder (after a merge)."""
        _rmtree(self.fs, self.root)


def is_part(name: str) -> bool:
    """Whether a file name is a committed part's."""
    return name.startswith("part-") and name.endswith(".parquet")


def _rmtree(fs: AbstractFileSystem | None, path: str) -> None:
    import shutil

    if fs is None:
        shutil.rmtree(path, ignore_errors=True)
    elif fs.exists(path):
        fs.rm(path, recursive=True)


@contextmanager
def _writing(where: str | os.PathLike):
    """Turn the write failures a user can fix into one line that names the fix.

    A full disk says that `--resume` works: parts are committed whole or not at all, so nothing written is lost.
    """
    try:
        yield
    except OSError as exc:
        code = exc.errno
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise PictagError(
                f"no space left on the device of {where}: free some space, then rerun with --resume (units "
                "committed so far are kept and will not be computed again)"
            ) from None
        if code == errno.EROFS:
            raise PictagError(f"cannot write {where}: read-only file system; choose another --out") from None
        if code in (errno.EACCES, errno.EPERM):
            raise PictagError(f"cannot write {where}: permission denied; choose another --out") from None
        if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            raise PictagError(f"cannot write {where}: {exc.strerror} ({exc.filename})") from None
        raise


class TableWriter:
    """Streams tables into one CSV or Parquet file (local or fsspec URL), chosen by its extension (any case).

    Locally the file is written under a temporary name and renamed at `close`; on object storage it is one
    (multipart) upload, which the store makes visible at `close`.
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
        with _writing(self.location):
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
        with _writing(self.location):
            self._writer.close()
            self._file.close()
            if self.fs is None:
                os.replace(self._tmp, self._target)
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
    fs, target = open_location(location)
    if os.path.isdir(target) if fs is None else fs.isdir(target):
        raise PictagError(
            f"output {location} is a folder: name a file in it, e.g. {location.rstrip('/')}/results{suffix}"
        )
    return suffix
