"""Byte access shared by all sources: local files through file descriptors, anything else through fsspec."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pictag.errors import PictagError
from pictag.storage.files import filesystem, is_url

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# User-named files read whole (labelme JSON and its images, labels and templates files): a real one is megabytes;
# a symlink to a 3 GB file or to /dev/zero must not be read into memory.
MAX_FILE_BYTES = 256 * 2**20
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}  # fmt: skip
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})


def safe_key(name: str) -> str:
    """``name`` as a key that UTF-8 outputs (CSV, Parquet, JSON) can hold, unchanged when it is valid text.

    File and tar member names are bytes; Python decodes those that are not UTF-8 with lone surrogates
    (surrogateescape), which no UTF-8 writer accepts. Each such byte becomes ``\\xHH`` (``caf\\xe9.jpg``), as
    Python's backslashreplace writes it and bash's ``$'caf\\xe9.jpg'`` reads it back. The original bytes are
    kept for reading the file; only the key is rewritten.
    """
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no byte decodes to (from JSON, say): written as \udXXX
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def read_file(path: str | os.PathLike, what: str, limit: int = MAX_FILE_BYTES, pipes: bool = False) -> bytes:
    """The bytes of a local file a user named, read only when it is a regular file of at most `limit` bytes.

    Opened without blocking, so a FIFO is refused rather than waited on, and checked on the open descriptor, so a
    symlink is judged by what it points to (a device, a FIFO) and no rename in between can swap the file.
    With `pipes`, a pipe is read too (a labels file given as `<(printf 'a\\nb\\n')`), to the same limit: it was
    opened without waiting for a writer, and a pipe with none reads as empty rather than hanging.

    Raises:
        PictagError: one line naming `what` and why: missing, not a regular file, too large, unreadable.
    """
    shown = safe_key(os.fsdecode(path))
    shown = shown if len(shown) <= 300 else f"{shown[:300]}..."
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PictagError(f"{what} {shown} does not exist") from None
    except OSError as exc:  # too long a name, no permission, a loop of symlinks
        raise PictagError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte, a lone surrogate no file name can hold
        raise PictagError(f"cannot read {what} {shown}: {exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if pipes and stat.S_ISFIFO(mode):
            os.set_blocking(fd, True)  # wait for the writer's data, not EAGAIN on the first read
        elif not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise PictagError(f"{what} {shown} is {kind}, not a file: name a regular file")
        chunks, size = [], 0
        while size <= limit:  # never more than limit + 1 bytes, even from a file that grows while it is read
            chunk = os.read(fd, min(limit + 1 - size, 2**24))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PictagError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise PictagError(f"{what} {shown} is larger than the {limit:,}-byte limit")
    return b"".join(chunks)


def inside(root: str | os.PathLike, name: str) -> str:
    """``root/name``, after checking that it lies inside ``root``: every write or delete under an output folder goes
    through here, so that no name from a file (``../x``, ``/etc/x``, a symlinked folder) reaches outside it.

    Raises:
        PictagError: the name is absolute, climbs out with "..", or resolves outside ``root`` through a symlink.
    """
    if "\x00" in name:
        raise PictagError(f"{safe_key(name)!r} holds a NUL byte: refused to write or delete it")
    path = os.path.join(root, name)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.isabs(name) or os.path.commonpath([real_root, real]) != real_root:
        raise PictagError(f"{safe_key(name)} lies outside {os.fsdecode(root)}: refused to write or delete it")
    return path


def is_image(name: str) -> bool:
    """Whether ``name`` has an image extension (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def location_of(fs: AbstractFileSystem, path: str) -> str:
    """A string that names ``path`` on ``fs`` by itself: a plain path for local files, so reads can use ``pread``."""
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def join(root: str, name: str) -> str:
    """``name`` resolved against the folder ``root``; absolute paths and URLs stand as they are."""
    if is_url(name) or os.path.isabs(name):
        return name
    return f"{root.rstrip('/')}/{name}"


def display_name(location: str) -> str:
    """The last path component, for messages."""
    return location.rstrip("/").rsplit("/", 1)[-1]


class Blob:
    """One file read by byte ranges: ``os.pread`` on a local descriptor, ranged ``cat_file`` elsewhere.

    The file is opened at the first read, and every failure is an ``OSError`` with a one-line message, so that
    callers can turn it into an error record.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self._fd: int | None = None
        self._fs: AbstractFileSystem | None = None
        self._size: int | None = None
        self._sized = False

    def _open(self) -> None:
        if is_url(self.location):
            self._fs, self._path = filesystem(self.location)
        else:
            self._fd = os.open(self.location, os.O_RDONLY)
            self._size = os.fstat(self._fd).st_size
            self._sized = True

    @property
    def size(self) -> int | None:
        """Size of the file in bytes (None if a server will not say); one metadata request for a remote file."""
        if not self._sized:
            self._size = self._remote(self._fs.size, self._path)
            self._sized = True
        return self._size

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        """``size`` bytes from ``offset``, or the rest of the file when ``size`` is None.

        Raises:
            OSError: The file cannot be read, or ends before ``offset + size``; the message is the record's reason.
        """
        if self._fd is None and self._fs is None:
            self._open()
        # Bytes past the end are refused before any request: backends answer them differently (short data,
        # HTTP 416, errors of their own), and the reason should be the same everywhere. Some HTTP servers
        # give no size; a short read then says the same.
        if size is not None and self.size is not None and offset + size > self.size:
            raise self._past_end()
        if self._fs is not None:
            end = None if size is None else offset + size
            data = self._remote(self._fs.cat_file, self._path, offset, end)
        else:
            size = self.size - offset if size is None else size
            data = os.pread(self._fd, size, offset)
        if size is not None and len(data) != size:
            raise self._past_end()  # the file shrank since its size was read
        return data

    def _past_end(self) -> OSError:
        # Reads by offset come from tar indexes: a row past the end most often means a truncated copy.
        return OSError(f"offset past the end of {display_name(self.location)} (truncated copy?)")

    @staticmethod
    def _remote(call: Callable[..., Any], *args: object) -> Any:
        try:
            return call(*args)
        except OSError:
            raise
        except Exception as e:  # backends raise their own types (aiohttp, botocore); callers expect OSError
            raise OSError(f"{type(e).__name__}: {e}") from e

    def close(self) -> None:
        """Close the local descriptor, if one was opened."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Blob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
