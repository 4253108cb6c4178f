"""Where a file is (a local path or an fsspec URL), and the calls every storage module makes on either kind.

Local paths go through os calls (so a write can be fsynced and renamed); anything else through fsspec, imported only
when a URL is met. Every write failure the user can fix is turned into one line naming the fix (`writing`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING

from pictag.errors import PictagError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str) -> bool:
    """Whether ``location`` names a protocol (``s3://``, ``memory://``) rather than a local path."""
    return bool(_URL.match(location))


def filesystem(location: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem serving ``location`` and the path within it (fsspec is imported here, not at start-up)."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as e:
        raise PictagError(f"cannot open {location}: {e} (install the fsspec backend for this protocol)") from e


def open_location(location: str | os.PathLike) -> tuple[AbstractFileSystem | None, str]:
    """(fsspec filesystem, path) for a URL, or (None, path) for a local path or ``file://`` URL (os calls, fsync)."""
    text = os.fspath(location)
    if not is_url(text):
        return None, text
    if text.startswith("file://"):
        return None, text[len("file://") :]
    return filesystem(text)


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


def makedirs(fs: AbstractFileSystem | None, path: str) -> None:
    """Create the folder `path` and its parents, if missing."""
    if fs is None:
        os.makedirs(path, exist_ok=True)
    else:
        fs.makedirs(path, exist_ok=True)


def delete(fs: AbstractFileSystem | None, path: str) -> None:
    """Remove the file `path`, if it is there."""
    try:
        os.unlink(path) if fs is None else fs.rm_file(path)
    except FileNotFoundError:
        pass


def rmtree(fs: AbstractFileSystem | None, path: str) -> None:
    """Remove the folder `path` and all it holds, if it is there."""
    if fs is None:
        shutil.rmtree(path, ignore_errors=True)
    elif fs.exists(path):
        fs.rm(path, recursive=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A local path to write, whose file appears at `path` whole, or not at all (for writers that open by path).

    The path is a temporary name beside `path`, unique to this attempt (``.NAME.PID-RANDOM.tmp``); once the writer
    is done, the file is synced, then renamed over `path`. Attempts that overlap (a retried unit, a zombie worker)
    each rename a whole file, the last one wins, and a process killed at any instant leaves at most its temporary
    file, which nothing reads.
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A local file to write (opened with `mode`), which appears at `path` whole, or not at all; see `atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, mode, newline="" if "b" not in mode else None) as f:
        yield f


@contextmanager
def writing(where: str | os.PathLike) -> Iterator[None]:
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
