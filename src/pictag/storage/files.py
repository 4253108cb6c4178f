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
from pathlib import Path
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


def is_dir(location: str | os.PathLike) -> bool:
    """Whether a folder is at a local path or fsspec URL."""
    fs, path = open_location(location)
    return os.path.isdir(path) if fs is None else fs.isdir(path)


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


def sync(path: str | os.PathLike) -> None:
    """Flush a local file, or a folder with all it holds, to the disk, so that a rename after it publishes whole data."""
    text = os.fspath(path)
    if os.path.isdir(text):
        for folder, subfolders, names in os.walk(text):
            for name in names + subfolders:
                _fsync(os.path.join(folder, name))
    _fsync(text)


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Publish the local file written at `tmp` as `path`: synced, then renamed over it (for writers that must name
    their temporary file themselves; `atomic_path` otherwise)."""
    sync(tmp)
    os.replace(tmp, path)


def _beside(path: str | os.PathLike, suffix: str) -> str:
    """A hidden name beside `path`, unique to this attempt: ``.NAME.PID-RANDOM{suffix}``."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A local path to write, whose file appears at `path` whole, or not at all (for writers that open by path).

    The path is a temporary name beside `path`, unique to this attempt (``.NAME.PID-RANDOM.tmp``); once the writer
    is done, the file is synced, then renamed over `path`. Attempts that overlap (a retried unit, a zombie worker)
    each rename a whole file, the last one wins, and a process killed at any instant leaves at most its temporary
    file, which nothing reads.
    """
    tmp = _beside(path, ".tmp")
    try:
        yield tmp
        commit(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """An empty local folder to fill, which appears at `path` whole, or not at all (a model, an export, a cache entry).

    The folder is a temporary one beside `path` (``.NAME.PID-RANDOM.tmp``, its parents created); once the block is
    done, every file in it is synced and it is renamed to `path`, so a reader, or a crash, sees the old folder or the
    new one, never half of one. A folder already at `path` is replaced: moved aside first (a folder cannot be renamed
    over a non-empty one), then removed. With ``replace=False`` it is kept instead and this one dropped: the first
    writer wins, for caches whose entries of one name are equal.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_beside(target, ".tmp"))
    tmp.mkdir()
    try:
        yield tmp
        sync(tmp)
        old = None
        if replace and os.path.lexists(target):
            old = _beside(target, ".old")
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:
                os.rename(old, target)  # the old folder stays, rather than none at all
            if replace:
                raise
        _fsync(target.parent)
        if old is not None:
            _remove(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def discard(path: str | os.PathLike) -> None:
    """Remove a local file or folder, renamed away first so that no reader opens half of a folder being deleted."""
    trash = _beside(path, ".tmp")
    os.rename(path, trash)
    _remove(trash)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A local file to write (opened with `mode`), which appears at `path` whole, or not at all; see `atomic_path`."""
    text = "b" not in mode  # text is UTF-8 whatever the locale, with the newlines the writer puts (as csv wants)
    with (
        atomic_path(path) as tmp,
        open(tmp, mode, newline="" if text else None, encoding="utf-8" if text else None) as f,
    ):
        yield f


def write_file(location: str | os.PathLike, data: bytes) -> None:
    """Write a whole small file: locally under a temporary name then renamed (its folder created), on object
    storage as one upload, which the store makes visible whole."""
    fs, path = open_location(location)
    if fs is not None:
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_file(path) as f:
        f.write(data)


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
