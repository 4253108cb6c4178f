"""Parquet indexes of uncompressed tars: where each image member's bytes start and how many there are.

An index has columns ``key`` (member name), ``offset`` (first byte of the member's data) and ``size``, and
file-level metadata ``tar_name`` and ``tar_size`` so that an index is never used with the wrong tar, and
``tar_mtime_ns`` so that an index found beside a tar (rather than given) is rebuilt when the tar changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pictag.config import cache_dir
from pictag.data._io import display_name, filesystem, is_image, is_url
from pictag.errors import PictagError

if TYPE_CHECKING:  # pyarrow and numpy load on first use, so that `import pictag` stays fast
    import numpy as np
    import pyarrow as pa

INDEX_SUFFIX = ".index.parquet"
COLUMNS = ("key", "offset", "size")

# How each compression people put around tars is recognised (magic bytes) and undone.
_COMPRESSIONS = {
    "gzip": (b"\x1f\x8b", "gunzip -k"),
    "bzip2": (b"BZh", "bunzip2 -k"),
    "xz": (b"\xfd7zXZ\x00", "unxz -k"),
    "zstd": (b"\x28\xb5\x2f\xfd", "unzstd"),
}
COMPRESSED_TAR_SUFFIXES = {".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bzip2", ".tar.xz": "xz", ".tar.zst": "zstd"}


def compressed_tar_error(tar: str, compression: str) -> PictagError:
    """The error for a compressed tar, whose members have no fixed offsets to seek to."""
    command = _COMPRESSIONS[compression][1]
    return PictagError(
        f"{tar} is {compression}-compressed, so its images cannot be read by offset: decompress it "
        f"(`{command} {tar}`) and open the .tar"
    )


def default_index_path(tar: str) -> str:
    """``<tar minus .tar>.index.parquet``, beside the tar."""
    return (tar[:-4] if tar.lower().endswith(".tar") else tar) + INDEX_SUFFIX


def build_tar_index(tar: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Index the image members of an uncompressed local tar, reading only its headers.

    Regular members with an image extension are indexed; when a name occurs twice the later member wins, as
    it does when tar extracts.

    Args:
        tar: Path of the tar.
        out: Where to write the index; default ``<tar minus .tar>.index.parquet`` beside the tar.

    Returns:
        The path of the written Parquet index.

    Raises:
        PictagError: The tar is missing, remote, compressed, truncated or not a tar.
    """
    tar = os.fspath(tar)
    if is_url(tar):
        raise PictagError(f"build_tar_index reads local tars only: build the index of {tar} on a local copy")
    out = Path(out if out is not None else default_index_path(tar))
    _write(_scan(tar), out)
    return out


def _scan(tar: str) -> pa.Table:
    import pyarrow as pa

    try:
        with open(tar, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise PictagError(f"cannot read {tar} ({e.strerror}): check the path") from e
    for compression, (magic, _) in _COMPRESSIONS.items():
        if head.startswith(magic):
            raise compressed_tar_error(tar, compression)
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(tar, "r:") as archive:
            for member in archive:  # each step reads one header and seeks past the member's data
                if member.isreg() and is_image(member.name):
                    members.pop(member.name, None)  # re-insert so the dict stays in offset order
                    members[member.name] = (member.offset_data, member.size)
    except tarfile.TarError as e:
        raise PictagError(f"cannot read {tar} as a tar ({e}): check that it is complete and uncompressed") from e
    offsets, sizes = zip(*members.values(), strict=True) if members else ((), ())
    table = pa.table(
        {
            "key": pa.array(list(members), pa.string()),
            "offset": pa.array(offsets, pa.int64()),
            "size": pa.array(sizes, pa.int64()),
        }
    )
    stat = os.stat(tar)
    meta = {"tar_name": os.path.basename(tar), "tar_size": str(stat.st_size), "tar_mtime_ns": str(stat.st_mtime_ns)}
    return table.replace_schema_metadata(meta)


def _write(table: pa.Table, out: Path) -> None:
    import pyarrow.parquet as pq

    # Write beside and rename, so a reader in another process never sees half an index.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class TarIndex:
    """A loaded index, rows sorted by offset so that a tar is read front to back."""

    location: str
    keys: pa.Array
    offsets: np.ndarray
    sizes: np.ndarray
    tar_name: str | None
    tar_size: int | None
    tar_mtime_ns: int | None

    def __len__(self) -> int:
        return len(self.offsets)

    def check(self, tar: str, tar_size: int) -> None:
        """Refuse the whole index unless it fits ``tar``, whose size is ``tar_size``.

        Raises:
            PictagError: The index names another tar, another size, or bytes past the tar's end.
        """
        name = display_name(tar)
        rebuild = f"rebuild it with `pictag index {tar}`"
        if self.tar_name is not None and _stem(self.tar_name) != _stem(name):
            raise PictagError(f"index {self.location} was built for {self.tar_name}, not {name}: {rebuild}")
        if self.tar_size is not None and self.tar_size != tar_size:
            raise PictagError(
                f"index {self.location} was built for {self.tar_name} ({self.tar_size:,} bytes) "
                f"but this file is {tar_size:,} bytes: {rebuild}"
            )
        end = int((self.offsets + self.sizes).max()) if len(self) else 0
        if end > tar_size:
            raise PictagError(
                f"index {self.location} points past the end of {name} ({end:,} > {tar_size:,} bytes): {rebuild}"
            )


def _stem(name: str) -> str:
    name = display_name(name)
    return name[:-4] if name.lower().endswith(".tar") else name


def load_index(location: str, tar: str) -> TarIndex:
    """Read and check the index at ``location`` (of the tar ``tar``, named in messages); cached per process.

    Raises:
        PictagError: The index is missing, not Parquet, lacks a column, or holds nulls, negatives or duplicate keys.
    """
    return _load_index(location, tar, _fingerprint(location))


def _fingerprint(location: str) -> tuple[int, int] | None:
    # Local indexes are rewritten in place when a tar changes, so the cache must notice a new file.
    if is_url(location):
        return None
    try:
        stat = os.stat(location)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=32)
def _load_index(location: str, tar: str, fingerprint: tuple[int, int] | None) -> TarIndex:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rebuild = f"rebuild it with `pictag index {tar}`"
    fs, path = filesystem(location)
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except FileNotFoundError as e:
        raise PictagError(f"index {location} does not exist: build it with `pictag index {tar}`") from e
    except (OSError, pa.ArrowException) as e:
        raise PictagError(f"cannot read index {location} as Parquet ({e}): {rebuild}") from e
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise PictagError(
            f"index {location} lacks column {', '.join(missing)} (it has {', '.join(table.column_names)}): {rebuild}"
        )
    try:
        keys = table["key"].combine_chunks().cast(pa.string())
        offsets = table["offset"].to_numpy().astype(np.int64)
        sizes = table["size"].to_numpy().astype(np.int64)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise PictagError(f"index {location} has unusable columns ({e}): {rebuild}") from e
    if keys.null_count or (offsets < 0).any() or (sizes < 0).any():
        raise PictagError(f"index {location} holds null keys or negative offsets or sizes: {rebuild}")
    if len(keys.unique()) != len(keys):
        raise PictagError(f"index {location} lists a key twice: {rebuild}")
    meta = table.schema.metadata or {}
    order = np.argsort(offsets, kind="stable")
    return TarIndex(
        location=location,
        keys=keys.take(pa.array(order)),
        offsets=offsets[order],
        sizes=sizes[order],
        tar_name=meta[b"tar_name"].decode() if b"tar_name" in meta else None,
        tar_size=_int_or_none(meta.get(b"tar_size")),
        tar_mtime_ns=_int_or_none(meta.get(b"tar_mtime_ns")),
    )


def _int_or_none(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def index_for(tar: str, tar_size: int) -> TarIndex:
    """The index of a tar opened without one: the one beside it or in the cache if current, else a new one.

    A new index is written beside the tar, or under the pictag cache (`pictag.config.cache_dir`) when that fails. A remote tar is never scanned: its index must be beside it.

    Raises:
        PictagError: A remote tar has no fitting index beside it, or no index can be built or written.
    """
    beside = default_index_path(tar)
    if is_url(tar):
        fs, path = filesystem(beside)
        if not fs.exists(path):
            raise PictagError(
                f"{tar} has no index at {beside}: build one on a local copy with `pictag index` "
                "and pass it with --index (remote tars are read by range, never scanned)"
            )
        index = load_index(beside, tar)
        index.check(tar, tar_size)
        return index
    mtime_ns = os.stat(tar).st_mtime_ns
    candidates = [beside, _cache_path(tar)]
    for candidate in candidates:
        try:
            index = load_index(candidate, tar)
            index.check(tar, tar_size)
        except PictagError:
            continue  # absent or stale: an index we found rather than were given is ours to replace
        if index.tar_mtime_ns == mtime_ns:
            return index
    table = _scan(tar)
    errors = []
    for candidate in candidates:
        try:
            Path(candidate).parent.mkdir(parents=True, exist_ok=True)
            _write(table, Path(candidate))
            return load_index(candidate, tar)
        except OSError as e:
            errors.append(f"{candidate}: {e.strerror or e}")
    raise PictagError(f"cannot write an index for {tar} ({'; '.join(errors)}): pass one with --index")


def _cache_path(tar: str) -> str:
    stat = os.stat(tar)
    digest = hashlib.sha256(f"{os.path.abspath(tar)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    cache = cache_dir() / "tar-index"
    return str(cache / f"{_stem(tar)}-{digest[:16]}{INDEX_SUFFIX}")
