"""Parquet indexes of uncompressed tars: where each image member's bytes start and how many there are.

An index has columns ``key`` (member name), ``offset`` (first byte of the member's data) and ``size``, and
file-level metadata ``tar_name`` and ``tar_size`` (the tar it was built from), and ``tar_mtime_ns`` so that an
index found beside a tar (rather than given) is rebuilt when the tar changes. Indexes written by other tools
name their columns differently: ``resolve_columns`` is the one place that maps them. Whether an index belongs
to its tar is decided by the tar itself: ``TarIndex.check`` reads the member headers of a sample of rows.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pictag.config import cache_dir
from pictag.data._io import Blob, display_name, filesystem, is_image, is_url, safe_key
from pictag.errors import PictagError
from pictag.storage.files import atomic_path

if TYPE_CHECKING:  # pyarrow and numpy load on first use, so that `import pictag` stays fast
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

INDEX_SUFFIX = ".index.parquet"
COLUMNS = ("key", "offset", "size")
# The names other tools give each column, in the order a reader would guess them.
COLUMN_NAMES = {
    "key": ("key", "name", "filename", "path", "file", "member"),
    "offset": ("offset", "offset_data", "start"),
    "size": ("size", "length", "nbytes"),
}
# Rows whose member header is read to prove that an index belongs to its tar: enough that a foreign index cannot
# pass by chance, few enough to cost 32 small reads (ranged requests on remote tars) per tar at open.
SAMPLE_ROWS = 32
_BLOCK = tarfile.BLOCKSIZE
# How far before a member's header to look for the GNU long-name or pax header that names it: a 4 KiB path
# (PATH_MAX) takes 9 blocks, pax records of other tools (times, xattrs) a few more.
_LOOKBEHIND = 32 * _BLOCK
_EXTENDED_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE)

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
    it does when tar extracts. A name that is not UTF-8 is indexed as its ``safe_key`` (``caf\\xe9.jpg``).

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
                    key = safe_key(member.name)
                    members.pop(key, None)  # re-insert so the dict stays in offset order
                    members[key] = (member.offset_data, member.size)
    except tarfile.ReadError as e:
        if not members or "unexpected end of data" not in str(e):
            raise PictagError(f"cannot read {tar} as a tar ({e}): check that it is complete and uncompressed") from e
        # A truncated copy: what lies before the cut is still readable, and a member cut short is indexed so that
        # it becomes an error record; members after the cut left no header to find.
        log.warning(
            "%s ends inside its data (truncated copy?): indexed the %d image members before the cut; any after it "
            "are lost with the missing bytes",
            tar,
            len(members),
        )
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
    meta = {
        "tar_name": safe_key(os.path.basename(tar)),
        "tar_size": str(stat.st_size),
        "tar_mtime_ns": str(stat.st_mtime_ns),
    }
    return table.replace_schema_metadata(meta)


def _write(table: pa.Table, out: Path) -> None:
    import pyarrow.parquet as pq

    # Written whole or not at all, so a reader in another process never sees half an index.
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


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
    columns: str | None = None  # the `columns` it was loaded with, so that workers load it the same way

    def __len__(self) -> int:
        return len(self.offsets)

    def check(self, tar: str, tar_size: int) -> None:
        """Refuse the index unless it belongs to ``tar``, whose size is ``tar_size``.

        The member header before each of a sample of rows (``SAMPLE_ROWS``, spread over the index) must name the
        row's key with its size. Rows past the end of the tar are left out of the sample: a truncated copy keeps
        its index, and those rows become error records (see ``past_end``).

        Raises:
            PictagError: The index names another tar, a sampled row is not the member the tar has there, or no
                sampled row lies inside the tar.
        """
        name = display_name(tar)
        rebuild = f"rebuild it with `pictag index {tar}`"
        if self.tar_name is not None and _stem(self.tar_name) != _stem(safe_key(name)):
            raise PictagError(f"index {self.location} was built for {self.tar_name}, not {name}: {rebuild}")
        rows = [row for row in _spread(len(self), SAMPLE_ROWS) if self.offsets[row] + self.sizes[row] <= tar_size]
        if len(self) and not rows:
            raise PictagError(
                f"index {self.location} does not belong to {name}: none of the rows checked lies inside the tar "
                f"({tar_size:,} bytes): {rebuild}"
            )
        with Blob(tar) as blob:
            for row in rows:
                key, offset, size = self.keys[row].as_py(), int(self.offsets[row]), int(self.sizes[row])
                try:
                    member = _member_at(blob, offset)
                except OSError as e:
                    raise PictagError(f"cannot read {tar} ({' '.join(str(e).split())}): check the path") from e
                if member is None:
                    found = "has no tar header before it"
                elif _plain(safe_key(member.name)) != _plain(key) or member.size != size:
                    found = f"is {safe_key(member.name)!r} ({member.size:,} bytes) in the tar"
                else:
                    continue
                raise PictagError(
                    f"index {self.location} does not belong to {name}: its row {key!r} ({size:,} bytes at offset "
                    f"{offset:,}) {found}: {rebuild}"
                )

    def past_end(self, tar_size: int) -> int:
        """How many rows end past ``tar_size`` bytes: records of a truncated copy, read as errors."""
        return int((self.offsets + self.sizes > tar_size).sum())


def _spread(n: int, k: int) -> list[int]:
    """``min(n, k)`` row numbers spread evenly over ``range(n)``, first and last included; the same every time."""
    k = min(n, k)
    return [0] if k == 1 else [i * (n - 1) // (k - 1) for i in range(k)]


def _plain(name: str) -> str:
    # Tools differ on a leading "./" (GNU tar writes it for `tar -C dir .`), so it does not tell tars apart.
    return name.removeprefix("./")


def _member_at(blob: Blob, offset: int) -> tarfile.TarInfo | None:
    """The tar member whose data starts at ``offset``, read by tarfile from the headers just before it.

    A long name is not in the member's own header (there it is cut at 100 bytes, or a placeholder) but in a
    GNU ``L`` or pax ``x`` header before it, so the nearest such header whose chain ends exactly at ``offset``
    is read with the member's; without one, the member's header alone. None when no valid header is there.
    Extended headers further back than ``_LOOKBEHIND`` (pax records over 16 KiB) are not seen.

    Raises:
        OSError: The bytes cannot be read.
    """
    if offset < _BLOCK or offset % _BLOCK:
        return None  # tar headers sit on 512-byte blocks
    start = max(0, offset - _BLOCK - _LOOKBEHIND)
    window = blob.read(start, offset - start)
    header = len(window) - _BLOCK
    # Byte 156 of a header is its type: only long-name and pax headers are worth handing to tarfile.
    extended = [at for at in range(header - _BLOCK, -1, -_BLOCK) if window[at + 156 : at + 157] in _EXTENDED_TYPES]
    for at in [*extended, header]:
        member = _first_member(window[at:])
        if member is not None and member.offset_data == len(window) - at:
            return member
    return None


def _first_member(data: bytes) -> tarfile.TarInfo | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            return archive.next()
    except (tarfile.TarError, ValueError):  # a bad checksum, zeros, a chain that runs off the window, bad pax
        return None


def _stem(name: str) -> str:
    name = display_name(name)
    return name[:-4] if name.lower().endswith(".tar") else name


def resolve_columns(names: Sequence[str], override: str | None, location: str) -> dict[str, str]:
    """Which column of an index holds each of ``key``, ``offset`` and ``size``.

    Args:
        names: The index's column names.
        override: ``"key=filename,offset=start,size=length"`` (any of the three); it wins over the known names
            (``COLUMN_NAMES``), which pick the rest.
        location: The index, named in messages.

    Returns:
        ``{"key": column, "offset": column, "size": column}``.

    Raises:
        PictagError: The override is malformed or names an absent column, or a role has no column or two.
    """
    chosen: dict[str, str] = {}
    for item in filter(str.strip, (override or "").split(",")):
        role, _, column = (part.strip() for part in item.partition("="))
        if role not in COLUMN_NAMES or not column:
            raise PictagError(
                f"--index-columns {override!r} is not ROLE=COLUMN pairs of key, offset and size: "
                "write it like key=filename,offset=start,size=length"
            )
        if column not in names:
            raise PictagError(
                f"index {location} has no column {column!r} (it has {', '.join(names)}): fix --index-columns"
            )
        chosen[role] = column
    for role, known in COLUMN_NAMES.items():
        if role in chosen:
            continue
        found = [name for name in known if name in names]
        if len(found) > 1:
            raise PictagError(
                f"index {location} has two {role} columns, {found[0]} and {found[1]}: "
                f"pick one with --index-columns {role}={found[0]}"
            )
        if not found:
            raise PictagError(
                f"index {location} has no {role} column ({' or '.join(known)}; it has {', '.join(names)}): "
                f"name it with --index-columns {role}=COLUMN"
            )
        chosen[role] = found[0]
    return {role: chosen[role] for role in COLUMN_NAMES}


def load_index(location: str, tar: str, columns: str | None = None) -> TarIndex:
    """Read and check the index at ``location`` (of the tar ``tar``, named in messages); cached per process.

    Args:
        location: Path or URL of the Parquet index.
        tar: The tar it indexes, named in messages.
        columns: Which columns hold key, offset and size, as ``"key=filename,offset=start,size=length"``
            (see ``resolve_columns``); by default the known names are recognised.

    Raises:
        PictagError: The index is missing, not Parquet, its columns are missing or ambiguous, or it holds nulls,
            negatives or duplicate keys.
    """
    return _load_index(location, tar, _fingerprint(location), columns)


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
def _load_index(location: str, tar: str, fingerprint: tuple[int, int] | None, columns: str | None) -> TarIndex:
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
    chosen = resolve_columns(table.column_names, columns, location)
    log.info("index %s: %s", location, ", ".join(f"{role}={column}" for role, column in chosen.items()))
    try:
        keys = table[chosen["key"]].combine_chunks().cast(pa.string())
        offsets = table[chosen["offset"]].to_numpy().astype(np.int64)
        sizes = table[chosen["size"]].to_numpy().astype(np.int64)
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
        columns=columns,
    )


def _int_or_none(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def index_for(tar: str, tar_size: int, columns: str | None = None) -> TarIndex:
    """The checked index of a tar opened without one: the one beside it or in the cache if current, else a new one.

    A new index is written beside the tar, or under the pictag cache (`pictag.config.cache_dir`) when that fails.
    A remote tar is never scanned: its index must be beside it, and is read with ``columns`` (see
    ``load_index``). Local indexes found here are pictag's own (they record the tar's mtime), so ``columns``
    does not apply to them.

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
        index = load_index(beside, tar, columns)
        index.check(tar, tar_size)
        return index
    mtime_ns = os.stat(tar).st_mtime_ns
    candidates = [beside, _cache_path(tar)]
    for candidate in candidates:
        try:
            index = load_index(candidate, tar)
            if index.tar_mtime_ns == mtime_ns:
                index.check(tar, tar_size)
                return index
        except PictagError:
            continue  # absent or stale: an index we found rather than were given is ours to replace
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
