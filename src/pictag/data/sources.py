"""Where images come from: one ``open_source(uri)`` for folders, files, tars, WebDataset shards, tables and URLs.

A source is a list of shards; a shard is a picklable list of records that a DataLoader worker reads on its own
(worker ``i`` of ``n`` takes ``shards[i::n]``). Shards hold locations and row ranges, never image bytes, and open
files only inside ``read``.
"""

from __future__ import annotations

import logging
import os
import posixpath
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from pictag.data._io import IMAGE_EXTENSIONS, Blob, display_name, filesystem, is_image, is_url, join, location_of
from pictag.data._patterns import expand_braces, has_glob, is_pattern
from pictag.data.tar_index import COMPRESSED_TAR_SUFFIXES, compressed_tar_error, index_for, load_index
from pictag.errors import PictagError

if TYPE_CHECKING:
    import pyarrow as pa
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

# Shards of 256 to 1000 records, 8 of them where that fits: enough to balance 2-8 workers, few enough to list.
_MIN_SHARD, _MAX_SHARD, _TARGET_SHARDS = 256, 1000, 8


@dataclass(frozen=True)
class Record:
    """One image of a source.

    Attributes:
        key: Stable id of the image, unique within its source.
        data: The encoded bytes as stored, or None when they could not be read.
        error: Why ``data`` is None, in one short line.
    """

    key: str
    data: bytes | None
    error: str | None = None


class Shard(ABC):
    """A picklable, independent part of a source."""

    name: str

    @abstractmethod
    def read(self, skip: Container[str] = frozenset()) -> Iterator[Record]:
        """Yield the shard's records in storage order, leaving out (and never reading) the keys in ``skip``."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of records, before any skip."""

    @abstractmethod
    def slice(self, start: int, stop: int) -> Shard:
        """Records ``start:stop`` of this shard, as a shard of their own, named ``<name>:<start>-<stop>``."""


class Source(ABC):
    """A collection of images, split into shards."""

    uri: str

    @abstractmethod
    def shards(self) -> list[Shard]:
        """The shards, in order; no record is in two of them."""

    def __iter__(self) -> Iterator[Record]:
        for shard in self.shards():
            yield from shard.read()

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards())


@dataclass(frozen=True)
class _ShardedSource(Source):
    uri: str
    parts: tuple[Shard, ...]

    def shards(self) -> list[Shard]:
        return list(self.parts)


def _record(key: str, read: Callable[..., bytes], *args: object) -> Record:
    try:
        return Record(key, read(*args))
    except OSError as e:
        return Record(key, None, " ".join(str(e).split()))


def _read_file(location: str) -> bytes:
    with Blob(location) as blob:
        return blob.read()


@dataclass(frozen=True)
class FileShard(Shard):
    """Whole image files: each key is a path relative to ``root``, or an absolute path or URL."""

    name: str
    root: str
    keys: tuple[str, ...]

    def read(self, skip: Container[str] = frozenset()) -> Iterator[Record]:
        for key in self.keys:
            if key not in skip:
                yield _record(key, _read_file, join(self.root, key))

    def __len__(self) -> int:
        return len(self.keys)

    def slice(self, start: int, stop: int) -> FileShard:
        return FileShard(f"{self.name}:{start}-{stop}", self.root, self.keys[start:stop])


@dataclass(frozen=True)
class TarShard(Shard):
    """Rows ``start:stop`` of a tar's index (sorted by offset), read with one open file; keys get ``prefix``.

    A row past the end of the tar (a truncated copy) is an error record, as is any row that cannot be read.
    ``columns`` is the index's column override (see ``load_index``).
    """

    name: str
    tar: str
    index: str
    start: int
    stop: int
    prefix: str = ""
    columns: str | None = None

    def read(self, skip: Container[str] = frozenset()) -> Iterator[Record]:
        index = load_index(self.index, self.tar, self.columns)
        rows = slice(self.start, self.stop)
        members = zip(
            index.keys[rows].to_pylist(), index.offsets[rows].tolist(), index.sizes[rows].tolist(), strict=True
        )
        with Blob(self.tar) as blob:
            for member, offset, size in members:
                key = self.prefix + member
                if key not in skip:
                    yield _record(key, blob.read, offset, size)

    def __len__(self) -> int:
        return self.stop - self.start

    def slice(self, start: int, stop: int) -> TarShard:
        name = f"{self.name}:{start}-{stop}"
        return TarShard(name, self.tar, self.index, self.start + start, self.start + stop, self.prefix)


def _ranges(n: int) -> list[tuple[int, int]]:
    count = max(-(-n // _MAX_SHARD), min(_TARGET_SHARDS, max(1, n // _MIN_SHARD))) if n else 0
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


def _file_shards(label: str, root: str, keys: Sequence[str]) -> list[Shard]:
    return [FileShard(f"{label}[{a}:{b}]", root, tuple(keys[a:b])) for a, b in _ranges(len(keys))]


@dataclass(frozen=True)
class _Target:
    """What ``open_source`` was asked to open, resolved to a filesystem and a path on it."""

    uri: str
    fs: AbstractFileSystem
    path: str
    index: str | None
    path_column: str
    index_columns: str | None = None

    def location(self, path: str | None = None) -> str:
        return location_of(self.fs, self.path if path is None else path)


def _read_csv(f: BinaryIO, column: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.csv as pv

    # Read paths as text even when they look like numbers ("0001"), so they stay as written.
    return pv.read_csv(f, convert_options=pv.ConvertOptions(column_types={column: pa.string()}))


def _read_parquet(f: BinaryIO, column: str) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(f)


_TABLE_READERS = {".csv": _read_csv, ".parquet": _read_parquet}


_OPENERS: dict[str, Callable[[_Target], list[Shard]]] = {}
_KIND_BY_SUFFIX = {".tar": "tar"} | dict.fromkeys(_TABLE_READERS, "table") | dict.fromkeys(IMAGE_EXTENSIONS, "image")
_KIND_BY_SUFFIX |= dict.fromkeys(COMPRESSED_TAR_SUFFIXES, "compressed tar")
_INDEXED_KINDS = ("tar", "pattern")


def _opener(kind: str) -> Callable[[Callable[[_Target], list[Shard]]], Callable[[_Target], list[Shard]]]:
    def register(fn: Callable[[_Target], list[Shard]]) -> Callable[[_Target], list[Shard]]:
        _OPENERS[kind] = fn
        return fn

    return register


def _suffix(path: str) -> str:
    name = display_name(path).lower()
    compressed = next((s for s in COMPRESSED_TAR_SUFFIXES if name.endswith(s)), None)
    return compressed or os.path.splitext(name)[1]


def _kind(target: _Target) -> str:
    """The one place that decides what a URI names."""
    if not target.fs.exists(target.path):
        if is_pattern(target.path):
            return "pattern"
        raise PictagError(f"{target.uri} does not exist: check the path")
    if target.fs.isdir(target.path):
        return "folder"
    kind = _KIND_BY_SUFFIX.get(_suffix(target.path))
    if kind is None:
        raise PictagError(
            f"cannot open {target.uri}: give a folder, an image, a .tar, a shard pattern such as "
            "shards/{000000..000009}.tar, or a .csv/.parquet table of paths"
        )
    return kind


def open_source(
    uri: str | os.PathLike,
    *,
    index: str | os.PathLike | None = None,
    path_column: str = "path",
    index_columns: str | None = None,
) -> Source:
    """Open a collection of images for reading.

    Args:
        uri: A folder (searched recursively), an image file, an uncompressed ``.tar``, a WebDataset pattern
            (``shards/{000000..000009}.tar``, ``{a,b}`` lists, globs), a ``.csv``/``.parquet`` table of image
            paths, or an fsspec URL of any of these (``s3://``, ``gs://``, ``https://``, ``memory://`` ...).
        index: Parquet index of a single tar (see ``build_tar_index``). Without it a local tar uses, or builds
            and caches, ``<name>.index.parquet`` beside it; a remote tar needs one there.
        path_column: The column of a table that holds image paths, relative to the table's folder or absolute.
        index_columns: Which columns of a given (or remote) index hold key, offset and size, as
            ``"key=filename,offset=start,size=length"``; by default the names other tools use are recognised.

    Returns:
        The source. Keys are paths relative to a folder, the file name of a single image, member names of a
        tar (``<tar stem>/<member>`` when a pattern names several tars) and path values of a table as written.

    Index rows past the end of their tar (a truncated copy) become error records, counted in one warning.

    Raises:
        PictagError: The URI is missing, unsupported, empty, or its index or table does not fit.
    """
    text = os.fspath(uri)
    fs, path = filesystem(text if is_url(text) else os.path.expanduser(text))
    index_location = None if index is None else location_of(*filesystem(os.fspath(index)))
    target = _Target(text, fs, path, index_location, path_column, index_columns)
    try:
        kind = _kind(target)
        if index is not None and kind not in _INDEXED_KINDS:
            raise PictagError(f"an index is for a tar, but {text} is a {kind}: drop the index")
        if index_columns is not None and kind not in _INDEXED_KINDS:
            raise PictagError(f"index columns are for a tar's index, but {text} is a {kind}: drop --index-columns")
        shards = _OPENERS[kind](target)
    except OSError as e:
        raise PictagError(f"cannot open {text}: {e}") from e
    if not shards:
        raise PictagError(f"{text} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): check the path")
    return _ShardedSource(text, tuple(shards))


@_opener("folder")
def _open_folder(target: _Target) -> list[Shard]:
    root = target.path.rstrip("/")
    keys = sorted(path[len(root) :].lstrip("/") for path in target.fs.find(root) if is_image(path))
    return _file_shards(display_name(root), target.location(root), keys)


@_opener("image")
def _open_image(target: _Target) -> list[Shard]:
    name = display_name(target.path)
    return _file_shards(name, target.location(posixpath.dirname(target.path)), [name])


@_opener("compressed tar")
def _open_compressed_tar(target: _Target) -> list[Shard]:
    raise compressed_tar_error(target.uri, COMPRESSED_TAR_SUFFIXES[_suffix(target.path)])


@_opener("tar")
def _open_tar(target: _Target) -> list[Shard]:
    return _tar_shards(target, [target.path])


@_opener("pattern")
def _open_pattern(target: _Target) -> list[Shard]:
    paths = [
        p
        for pattern in expand_braces(target.path)
        for p in (target.fs.glob(pattern) if has_glob(pattern) else [pattern])
    ]
    if not paths:
        raise PictagError(f"{target.uri} matches no files: check the pattern")
    other = next((p for p in paths if not p.lower().endswith(".tar")), None)
    if other is not None:
        raise PictagError(
            f"{target.uri} matches {target.location(other)}, which is not a .tar: patterns name tar shards"
        )
    return _tar_shards(target, paths)


def _tar_shards(target: _Target, paths: list[str]) -> list[Shard]:
    if target.index is not None and len(paths) > 1:
        raise PictagError(
            f"{target.uri} names {len(paths)} tars but one index was given: drop it, each tar uses the "
            "<name>.index.parquet beside it"
        )
    sizes = []
    for path in paths:
        try:
            sizes.append(target.fs.size(path))
        except FileNotFoundError as e:
            raise PictagError(f"{target.location(path)} does not exist ({target.uri} names it): check the path") from e
    # Several tars share one key space, told apart by their path below the folder they have in common.
    common = posixpath.commonpath([posixpath.dirname(p) for p in paths])
    shards: list[Shard] = []
    past_end: dict[str, int] = {}
    for path, size in zip(paths, sizes, strict=True):
        tar = target.location(path)
        if target.index is None:
            index = index_for(tar, size, target.index_columns)
        else:
            index = load_index(target.index, tar, target.index_columns)
            index.check(tar, size)
        if index.past_end(size):
            past_end[display_name(tar)] = index.past_end(size)
        prefix = posixpath.relpath(path[:-4], common) + "/" if len(paths) > 1 else ""
        shards += [
            TarShard(f"{display_name(tar)}[{a}:{b}]", tar, index.location, a, b, prefix, index.columns)
            for a, b in _ranges(len(index))
        ]
    if past_end:
        tars = ", ".join(list(past_end)[:3]) + (f" and {len(past_end) - 3} more" if len(past_end) > 3 else "")
        log.warning(
            "%s index rows lie past the end of %s (truncated copy?): they go to the errors file",
            f"{sum(past_end.values()):,}",
            tars,
        )
    return shards


@_opener("table")
def _open_table(target: _Target) -> list[Shard]:
    import pyarrow as pa

    suffix = _suffix(target.path)
    try:
        with target.fs.open(target.path, "rb") as f:
            table = _TABLE_READERS[suffix](f, target.path_column)
    except pa.ArrowException as e:
        raise PictagError(
            f"cannot read {target.uri} as a {suffix} table ({' '.join(str(e).split())}): check the file"
        ) from e
    column = target.path_column
    if column not in table.column_names:
        raise PictagError(
            f"{target.uri} has no column {column!r} (it has {', '.join(table.column_names)}): "
            "name the column of image paths with path_column"
        )
    if not pa.types.is_string(table[column].type) and not pa.types.is_large_string(table[column].type):
        raise PictagError(
            f"column {column!r} of {target.uri} holds {table[column].type}, not paths: pick the path column"
        )
    paths = table[column].to_pylist()
    empty = next((row for row, path in enumerate(paths, 1) if not path), None)
    if empty is not None:
        raise PictagError(f"row {empty} of {target.uri} has no {column!r}: fill it in or drop the row")
    if len(set(paths)) != len(paths):
        twice = next(path for path, count in Counter(paths).items() if count > 1)
        raise PictagError(f"{target.uri} lists {twice} twice: drop the duplicate rows, keys must be unique")
    return _file_shards(display_name(target.path), target.location(posixpath.dirname(target.path)), paths)
