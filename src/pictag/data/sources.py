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
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import TYPE_CHECKING, Any, BinaryIO

from pictag.data._io import (
    IMAGE_EXTENSIONS,
    Blob,
    display_name,
    filesystem,
    is_image,
    is_url,
    join,
    location_of,
    safe_key,
)
from pictag.data._patterns import expand_braces, has_glob, is_pattern
from pictag.data.labelled import Annotation, class_folders, table_annotations, table_paths
from pictag.data.tar_index import COMPRESSED_TAR_SUFFIXES, compressed_tar_error, index_for, load_index
from pictag.errors import PictagError
from pictag.registry import Registry

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
        label: The image's class, in a labelled source.
        text: The image's text (a caption, a title), in a labelled table with a text column.
        meta: The other columns of a labelled table's row.
    """

    key: str
    data: bytes | None
    error: str | None = None
    label: str | None = None
    text: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)  # a dict is unhashable; records stay hashable


class Shard(ABC):
    """A picklable, independent part of a source.

    Attributes:
        name: Where the shard is, for messages.
        annotations: In a labelled source, one per record in storage order; empty otherwise.
    """

    name: str
    annotations: tuple[Annotation, ...] = ()

    @abstractmethod
    def read(self, skip: Container[str] = frozenset()) -> Iterator[Record]:
        """Yield the shard's records in storage order, leaving out (and never reading) the keys in ``skip``."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of records, before any skip."""

    @abstractmethod
    def paths(self) -> list[str]:
        """Each record's path inside its folder or tar, in storage order, without any key prefix."""

    def record_keys(self) -> list[str]:
        """Each record's key, in storage order, without reading any record."""
        return self.paths()

    @abstractmethod
    def slice(self, start: int, stop: int) -> Shard:
        """Records ``start:stop`` of this shard, as a shard of their own, named ``<name>:<start>-<stop>``."""


class Only:
    """A `skip` set for `Shard.read`: everything except the wanted keys (picklable, for DataLoader workers)."""

    def __init__(self, wanted: frozenset[str]):
        self.wanted = wanted

    def __contains__(self, key: object) -> bool:
        return key not in self.wanted


class Source(ABC):
    """A collection of images, split into shards.

    Attributes:
        uri: What was opened.
        classes: The labels of a labelled source, sorted; empty otherwise.
    """

    uri: str
    classes: tuple[str, ...] = ()

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
    classes: tuple[str, ...] = ()

    def shards(self) -> list[Shard]:
        return list(self.parts)


def _record(key: str, read: Callable[..., bytes], *args: object, annotation: Annotation | None = None) -> Record:
    fields = annotation._asdict() if annotation else {}
    try:
        return Record(key, read(*args), **fields)
    except OSError as e:
        return Record(key, None, " ".join(str(e).split()), **fields)


def _read_file(location: str) -> bytes:
    with Blob(location) as blob:
        return blob.read()


@dataclass(frozen=True)
class FileShard(Shard):
    """Whole image files: each key is a path relative to ``root``, or an absolute path or URL.

    ``keys`` are the paths as listed, which may hold bytes that are not UTF-8; records are keyed by their
    ``safe_key``, and the file is read by the path as listed.
    """

    name: str
    root: str
    keys: tuple[str, ...]
    annotations: tuple[Annotation, ...] = ()

    def read(self, skip: Container[str] = frozenset()) -> Iterator[Record]:
        for path, annotation in zip(self.keys, self.annotations or (None,) * len(self), strict=True):
            key = safe_key(path)
            if key not in skip:
                yield _record(key, _read_file, join(self.root, path), annotation=annotation)

    def __len__(self) -> int:
        return len(self.keys)

    def paths(self) -> list[str]:
        return [safe_key(path) for path in self.keys]

    def slice(self, start: int, stop: int) -> FileShard:
        name, keys, annotations = f"{self.name}:{start}-{stop}", self.keys[start:stop], self.annotations[start:stop]
        return replace(self, name=name, keys=keys, annotations=annotations)


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
    annotations: tuple[Annotation, ...] = ()

    def read(self, skip: Container[str] = frozenset()) -> Iterator[Record]:
        index = load_index(self.index, self.tar, self.columns)
        rows = slice(self.start, self.stop)
        members = zip(
            index.keys[rows].to_pylist(), index.offsets[rows].tolist(), index.sizes[rows].tolist(), strict=True
        )
        annotations = self.annotations or (None,) * len(self)
        with Blob(self.tar) as blob:
            for (member, offset, size), annotation in zip(members, annotations, strict=True):
                key = self.prefix + member
                if key not in skip:
                    yield _record(key, blob.read, offset, size, annotation=annotation)

    def __len__(self) -> int:
        return self.stop - self.start

    def paths(self) -> list[str]:
        return load_index(self.index, self.tar, self.columns).keys[self.start : self.stop].to_pylist()

    def record_keys(self) -> list[str]:
        return [self.prefix + path for path in self.paths()]

    def slice(self, start: int, stop: int) -> TarShard:
        return replace(
            self,
            name=f"{self.name}:{start}-{stop}",
            start=self.start + start,
            stop=self.start + stop,
            annotations=self.annotations[start:stop],
        )


@dataclass(frozen=True)
class UnlistedShard(Shard):
    """Folders that could not be listed (no permission, an I/O error): one error record each, keyed ``<folder>/``.

    Their images are unknown, so they cannot be records; an error record per folder puts them in the errors file
    and the run's count of unreadable records, instead of leaving them out without a word.
    """

    name: str
    keys: tuple[str, ...]
    reasons: tuple[str, ...]
    annotations: tuple[Annotation, ...] = ()

    def read(self, skip: Container[str] = frozenset()) -> Iterator[Record]:
        annotations = self.annotations or (None,) * len(self)
        for key, reason, annotation in zip(self.keys, self.reasons, annotations, strict=True):
            if key not in skip:
                yield Record(key, None, reason, **(annotation._asdict() if annotation else {}))

    def __len__(self) -> int:
        return len(self.keys)

    def paths(self) -> list[str]:
        return list(self.keys)

    def slice(self, start: int, stop: int) -> UnlistedShard:
        return replace(
            self,
            name=f"{self.name}:{start}-{stop}",
            keys=self.keys[start:stop],
            reasons=self.reasons[start:stop],
            annotations=self.annotations[start:stop],
        )


def _ranges(n: int) -> list[tuple[int, int]]:
    count = max(-(-n // _MAX_SHARD), min(_TARGET_SHARDS, max(1, n // _MIN_SHARD))) if n else 0
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


def _file_shards(name: str, root: str, keys: Sequence[str], annotations: Sequence[Annotation] = ()) -> list[Shard]:
    return [
        FileShard(f"{name}[{a}:{b}]", root, tuple(keys[a:b]), tuple(annotations[a:b])) for a, b in _ranges(len(keys))
    ]


@dataclass(frozen=True)
class _Target:
    """What ``open_source`` was asked to open, resolved to a filesystem and a path on it."""

    uri: str
    fs: AbstractFileSystem
    path: str
    index: str | None
    path_column: str
    labelled: bool
    label_column: str
    text_column: str | None
    index_columns: str | None = None
    images: str | None = None
    product_options: Mapping[str, Any] = field(default_factory=dict)

    def location(self, path: str | None = None) -> str:
        return location_of(self.fs, self.path if path is None else path)


def _read_csv(f: BinaryIO, columns: Sequence[str]) -> pa.Table:
    import pyarrow as pa
    import pyarrow.csv as pv

    # Read paths, labels and texts as text even when they look like numbers ("0001"), so they stay as written.
    return pv.read_csv(f, convert_options=pv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string())))


def _read_parquet(f: BinaryIO, columns: Sequence[str]) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(f)


_TABLE_READERS = {".csv": _read_csv, ".parquet": _read_parquet}


# What each kind of URI opens with, by the kind `_kind` decides; a plug-in adds a kind with `SOURCE_KINDS.register`.
SOURCE_KINDS: Registry[Callable[[_Target], list[Shard]]] = Registry(
    "source kind",
    {
        "folder": "pictag.data.sources:_open_folder",
        "image": "pictag.data.sources:_open_image",
        "compressed tar": "pictag.data.sources:_open_compressed_tar",
        "tar": "pictag.data.sources:_open_tar",
        "pattern": "pictag.data.sources:_open_pattern",
        "table": "pictag.data.sources:_open_table",
        "products": "pictag.data.products:product_shards",
    },
)
_KIND_BY_SUFFIX = {".tar": "tar"} | dict.fromkeys(_TABLE_READERS, "table") | dict.fromkeys(IMAGE_EXTENSIONS, "image")
_KIND_BY_SUFFIX |= dict.fromkeys(COMPRESSED_TAR_SUFFIXES, "compressed tar")
_INDEXED_KINDS = ("tar", "pattern")


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
    if kind == "table" and target.images is not None:  # a table of products, whose images are found by id
        return "products"
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
    labelled: bool = False,
    label_column: str = "label",
    text_column: str | None = None,
    images: str | os.PathLike | None = None,
    **product_options: Any,
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
        labelled: Give every record a label (see ``pictag.data.labelled``). A table takes it from
            ``label_column``, its text from ``text_column`` and its other columns as ``meta``; anything else is
            read as a folder of classes, labelled by the first folder of each path inside the folder or tar
            (``<class>/x.jpg``). The source's ``classes`` lists the labels.
        label_column: The column of a labelled table that holds labels.
        text_column: The column of a labelled table that holds texts; by default ``text`` where there is one.
        images: The folder of a product table's images: the table is then one row per product, and its records
            are each product's image views, with its label, text and id (see ``pictag.data.products``).
        **product_options: How a product table is read (``id_col``, ``label_col``, ``text_cols``, ``need_label``,
            ``missing_image``...: those of ``pictag.data.products.read_products``).

    Returns:
        The source. Keys are paths relative to a folder, the file name of a single image, member names of a
        tar (``<tar stem>/<member>`` when a pattern names several tars) and path values of a table as written.

    Index rows past the end of their tar (a truncated copy) become error records, counted in one warning.

    Raises:
        PictagError: The URI is missing, unsupported, empty, or its index or table does not fit; or, when
            ``labelled``, an image has no label or a class folder no image.
    """
    text = os.fspath(uri)
    fs, path = filesystem(text if is_url(text) else os.path.expanduser(text))
    index_location = None if index is None else location_of(*filesystem(os.fspath(index)))
    images = None if images is None else os.fspath(images)
    target = _Target(
        text, fs, path, index_location, path_column, labelled, label_column, text_column, index_columns, images,
        product_options,
    )  # fmt: skip
    try:
        kind = _kind(target)
        if index is not None and kind not in _INDEXED_KINDS:
            raise PictagError(f"an index is for a tar, but {text} is a {kind}: drop the index")
        if index_columns is not None and kind not in _INDEXED_KINDS:
            raise PictagError(f"index columns are for a tar's index, but {text} is a {kind}: drop --index-columns")
        if (images is not None or product_options) and kind != "products":
            raise PictagError(f"images and product options read a product table (.csv, .parquet), not a {kind}")
        shards = SOURCE_KINDS.get(kind)(target)
        if labelled and kind not in ("table", "products"):  # a table is labelled by its columns as it is read
            shards = _by_class_folder(target, kind, shards)
    except OSError as e:
        raise PictagError(f"cannot open {text}: {e}") from e
    if not shards:
        raise PictagError(f"{text} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): check the path")
    classes = sorted({a.label for shard in shards for a in shard.annotations if a.label is not None})
    return _ShardedSource(text, tuple(shards), tuple(classes))


def _by_class_folder(target: _Target, kind: str, shards: list[Shard]) -> list[Shard]:
    """The shards with each record labelled by the first folder of its path inside the folder or tar."""
    paths = [shard.paths() for shard in shards]
    root = target.path.rstrip("/")
    listed = target.fs.ls(root, detail=True) if kind == "folder" else []
    folders = [safe_key(display_name(entry["name"])) for entry in listed if entry["type"] == "directory"]
    annotations = iter(class_folders(target.uri, [p for part in paths for p in part], folders))
    return [replace(shard, annotations=tuple(islice(annotations, len(part)))) for shard, part in zip(shards, paths)]


def _open_folder(target: _Target) -> list[Shard]:
    root = target.path.rstrip("/")
    unlisted: list[OSError] = []
    # Local folders are walked here: fsspec's walk skips a subfolder it cannot list (permissions) without a word.
    # Object stores have no folders to refuse.
    paths = _walk_local(root, unlisted) if "file" in target.fs.protocol else target.fs.find(root)
    keys = sorted(path[len(root) :].lstrip("/") for path in paths if is_image(path))
    shards = _file_shards(display_name(root), target.location(root), keys)
    if unlisted:
        shards.append(_unlisted_shard(target, root, unlisted))
    return shards


def _walk_local(root: str, unlisted: list[OSError]) -> list[str]:
    """Every file below the local folder ``root``, following links to folders once; ``unlisted`` gains the errors
    of the folders that could not be listed."""
    paths, seen = [], set()
    for folder, dirs, files in os.walk(root, onerror=unlisted.append, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:  # a link back up the tree: walking on would never end
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        paths += [f"{folder}/{name}" for name in files]
    return paths


def _unlisted_shard(target: _Target, root: str, errors: list[OSError]) -> UnlistedShard:
    """The folders that could not be listed, as error records; one warning says how many."""
    keys, reasons = [], []
    for error in errors:
        folder = str(error.filename or "").rstrip("/")
        if folder in ("", root):
            raise PictagError(f"cannot list {target.uri} ({error.strerror or error}): check its permissions")
        keys.append(safe_key(posixpath.relpath(folder, root)) + "/")
        reasons.append(f"cannot list this folder ({error.strerror or error}): the images in it were left out")
    log.warning(
        "%d folder(s) inside %s could not be listed (e.g. %s: %s): they go to the errors file",
        len(keys),
        target.uri,
        keys[0],
        errors[0].strerror or errors[0],
    )
    return UnlistedShard(f"{display_name(root)}[unlisted]", tuple(keys), tuple(reasons))


def _open_image(target: _Target) -> list[Shard]:
    name = display_name(target.path)
    return _file_shards(name, target.location(posixpath.dirname(target.path)), [name])


def _open_compressed_tar(target: _Target) -> list[Shard]:
    raise compressed_tar_error(target.uri, COMPRESSED_TAR_SUFFIXES[_suffix(target.path)])


def _open_tar(target: _Target) -> list[Shard]:
    return _tar_shards(target, [target.path])


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
        prefix = safe_key(posixpath.relpath(path[:-4], common)) + "/" if len(paths) > 1 else ""
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


def _open_table(target: _Target) -> list[Shard]:
    import pyarrow as pa

    suffix = _suffix(target.path)
    columns = (target.path_column, target.label_column, target.text_column or "text")
    try:
        with target.fs.open(target.path, "rb") as f:
            table = _TABLE_READERS[suffix](f, columns)
    except pa.ArrowException as e:
        raise PictagError(
            f"cannot read {target.uri} as a {suffix} table ({' '.join(str(e).split())}): check the file"
        ) from e
    paths = table_paths(table, target.uri, target.path_column)
    annotations = ()
    if target.labelled:
        annotations = table_annotations(
            table,
            target.uri,
            path_column=target.path_column,
            label_column=target.label_column,
            text_column=target.text_column,
        )
    root = target.location(posixpath.dirname(target.path))
    return _file_shards(display_name(target.path), root, paths, annotations)
