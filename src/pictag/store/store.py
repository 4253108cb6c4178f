"""An embedding store: a folder of Parquet shards (key, embedding[, label]) and a manifest saying how they were made.

The folder is a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...), read and written through the
`PartStore` of the `pictag embed` job that made it: the shards are that job's parts.

    emb/
      manifest.json        model spec, weights id, preprocessing fingerprint, dim, dtype, count, source, and its
                           shards: name, rows, bytes and a checksum of each
      part-*.parquet       (key: string, embedding: fixed_size_list<float16|float32>[dim], and label: string in a
                           store of a labelled source, `pictag embed --labelled`): one per unit of work
      errors.csv           images that could not be embedded, and why
      index.faiss          optional search index (`pictag index-embeddings`), with index.json

Shards are read one record batch at a time through a memory map, and the embedding column goes to numpy without a
copy, so a store of any size is processed in constant memory. On object storage there is no memory map: each shard is
opened through fsspec and read with ranged reads (its footer, then the pages of the columns asked for), still one
record batch at a time.

Opening a store checks it against its manifest, so that a shard deleted, copied in, truncated or overwritten is
refused in one line instead of giving fewer rows, more rows, or an Arrow traceback: the shard files must be exactly
the listed ones, each of its listed size and with its listed footer checksum (the footer holds every page's
offset and the row count, so that costs one small read per shard, not a pass over gigabytes). Pages carry CRCs that
are verified as they are read, which catches damage inside a shard that leaves its footer whole. This guards
against accidents, not against someone who can rewrite the manifest too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pictag.errors import PictagError
from pictag.storage.parts import PartStore, is_part

if TYPE_CHECKING:
    import torch

    from pictag.models.base import Encoder

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
READ_ROWS = 65536


def shard_schema(dim: int, dtype: str = "float16", labelled: bool = False) -> pa.Schema:
    """The schema of every shard: a string key, a fixed-size list of `dim` floats, and a string label if labelled."""
    fields = [("key", pa.string()), ("embedding", pa.list_(DTYPES[dtype], dim))]
    return pa.schema(fields + [("label", pa.string())] * labelled)


def embedding_table(
    keys: Sequence[str], embeddings: np.ndarray, dtype: str = "float16", labels: Sequence[str] | None = None
) -> pa.Table:
    """Rows for a shard from keys, an (N, dim) array (cast to the store's dtype) and, in a labelled store, labels."""
    flat = np.ascontiguousarray(embeddings, dtype=np.dtype(dtype)).reshape(-1)
    values = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=DTYPES[dtype]), embeddings.shape[1])
    columns = [pa.array(list(keys), pa.string()), values]
    if labels is not None:
        columns.append(pa.array(list(labels), pa.string()))
    return pa.table(columns, schema=shard_schema(embeddings.shape[1], dtype, labels is not None))


# Keys compressed; embeddings stored plain: floats barely compress, and plain pages read at memory speed. Page CRCs
# let every read notice a damaged page.
SHARD_WRITE_OPTIONS = {
    "compression": {"key": "zstd", "embedding": "none"},
    "use_dictionary": ["key"],
    "write_page_checksum": True,
}
_SHARD_NAME = re.compile(r"part-[0-9A-Za-z-]+\.parquet")
_RECREATE = "re-create the store with `pictag embed --overwrite`"


# Bytes read from the end of each shard to find its footer: a shard's footer is under 1 KB (642 bytes for 1,000
# rows of 512 float16: one row group), and a longer one costs a second read. Opening a local store of 300 such
# shards measured 5.5 ms with 8 KB tails, 8.8 ms with an open and two reads each, 16.7 ms with 64 KB tails.
FOOTER_READ = 8192


def read_footers(files: PartStore, sizes: dict[str, int]) -> dict[str, bytes]:
    """Each named shard's Parquet footer (its metadata: row count, and every page's offset and size), with the 8
    bytes after it (its length and the magic), as `pq.read_metadata` reads it.

    The footers are read together (`PartStore.tails`): one batch of ranged reads on object storage.

    Raises:
        PictagError: a shard too short to be Parquet, or one that does not end like Parquet.
    """
    footers = {}
    for name, tail in files.tails(sizes, FOOTER_READ).items():
        where = files.url(name)
        if sizes[name] < 12:
            raise PictagError(f"shard {where} is {sizes[name]} bytes, too short to be Parquet: {_RECREATE}")
        length = int.from_bytes(tail[-8:-4], "little")
        if tail[-4:] != b"PAR1" or length > sizes[name] - 12:
            raise PictagError(f"shard {where} does not end like a Parquet file (truncated or overwritten): {_RECREATE}")
        if length + 8 > len(tail):
            tail = files.tails({name: sizes[name]}, length + 8)[name]
        footers[name] = tail[-8 - length :]
    return footers


def footer_digest(footer: bytes) -> str:
    """SHA-256 of a footer from `read_footers`, its 8 trailing bytes left out."""
    return hashlib.sha256(footer[:-8]).hexdigest()


def describe_shards(files: PartStore) -> list[dict[str, Any]]:
    """What a manifest says of each shard in `files`: name, rows, bytes and footer checksum."""
    sizes = {name: size for name, size in files.sizes().items() if is_part(name)}
    footers = read_footers(files, sizes)
    return [
        {
            "name": name,
            "rows": pq.read_metadata(pa.BufferReader(footers[name])).num_rows,
            "bytes": sizes[name],
            "footer_sha256": footer_digest(footers[name]),
        }
        for name in sorted(sizes)
    ]


def embedding_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The (N, dim) numpy view of a fixed_size_list embedding column (no copy for a single chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dim = column.type.list_size
    values = column.values.slice(column.offset * dim, len(column) * dim)
    return values.to_numpy(zero_copy_only=True).reshape(len(column), dim)


def as_float32_tensor(array: np.ndarray):
    """A new float32 torch tensor from a (read-only, Arrow-backed) numpy array, converted by torch's fast kernels."""
    import torch

    with warnings.catch_warnings():
        # Arrow's buffers are read-only; torch warns although the view is only read, once, to make the copy.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).float()


@dataclass
class Manifest:
    """How a store's embeddings were made; a store is only usable with the encoder that matches it."""

    model: str
    weights_id: str
    preprocess: str
    dim: int
    dtype: str = "float16"
    count: int = 0
    errors: int = 0
    complete: bool = False
    source: str | None = None
    index: str | None = None
    index_columns: str | None = None
    path_column: str = "path"
    checkpoint: str | None = None
    random_weights: bool = False
    labelled: bool = False
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    shards: list[dict[str, Any]] | None = None  # None in stores written before shards were listed

    @classmethod
    def read(cls, folder: str | os.PathLike) -> Manifest:
        """The manifest of the store in `folder`, its fields checked.

        Raises:
            PictagError: no manifest, or one that is not JSON, not an object, or has a missing or ill-typed field.
        """
        files = PartStore(folder)
        path = files.url(MANIFEST)
        if not files.exists(MANIFEST):
            raise PictagError(f"{folder} is not an embedding store (no {MANIFEST}): create one with `pictag embed`")
        try:
            values = json.loads(files.read_bytes(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise PictagError(f"{path} is not valid JSON ({reason}): re-create the store with `pictag embed`") from None
        except OSError as exc:
            raise PictagError(f"cannot read {path} ({exc.strerror or exc}): check its permissions") from None
        if not isinstance(values, dict):
            raise PictagError(
                f"{path} holds a JSON {type(values).__name__}, not the object a manifest is: re-create the store "
                "with `pictag embed`"
            )
        if isinstance(values.get("format_version"), int) and values["format_version"] > FORMAT_VERSION:
            raise PictagError(f"{folder} was written by a newer pictag (format {values['format_version']}): upgrade")
        _check_fields(values, path)
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def write(self, folder: str | os.PathLike) -> None:
        """Write whole, so a reader never sees half a manifest (a rename locally, one PUT on object storage)."""
        PartStore(folder).write_bytes(MANIFEST, (json.dumps(asdict(self), indent=2) + "\n").encode())


# What each manifest field must be: (type, required, check, what it should be).
def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_FIELDS: dict[str, tuple[Any, bool, Any, str]] = {
    "model": (str, True, bool, "a model spec"),
    "weights_id": (str, True, None, "a string"),
    "preprocess": (str, True, None, "a string"),
    "dim": (int, True, lambda v: _count(v) and v > 0, "a positive integer"),
    "dtype": (str, False, lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    "count": (int, False, _count, "a count (an integer >= 0)"),
    "errors": (int, False, _count, "a count (an integer >= 0)"),
    "complete": (bool, False, None, "true or false"),
    "labelled": (bool, False, None, "true or false"),
    "shards": (list, False, None, "a list"),
}
_SHARD_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "name": (str, lambda v: bool(_SHARD_NAME.fullmatch(v)), "a shard file name (part-*.parquet)"),
    "rows": (int, _count, "a count"),
    "bytes": (int, _count, "a count"),
    "footer_sha256": (str, lambda v: bool(re.fullmatch(r"[0-9a-f]{64}", v)), "a SHA-256 in hex"),
}


def _check_fields(values: dict, path: str) -> None:
    """Refuse a manifest with a missing or ill-typed field, in one line naming it."""
    for name, (kind, required, check, should) in _FIELDS.items():
        if name not in values or values[name] is None and not required:
            if required:
                raise PictagError(f"{path} has no {name!r}: {_RECREATE}")
            continue
        value = values[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or (check and not check(value)):
            raise PictagError(f"{path}: {name!r} is {json.dumps(value)[:60]}, not {should}: {_RECREATE}")
    for i, shard in enumerate(values.get("shards") or []):
        if not isinstance(shard, dict):
            raise PictagError(f"{path}: shard {i} is not an object: {_RECREATE}")
        for name, (kind, check, should) in _SHARD_FIELDS.items():
            value = shard.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or not check(value):
                raise PictagError(f"{path}: shard {i} {name!r} is {json.dumps(value)[:60]}, not {should}: {_RECREATE}")
    names = [shard["name"] for shard in values.get("shards") or []]
    if len(set(names)) != len(names):
        raise PictagError(f"{path} lists a shard twice: {_RECREATE}")


def write_store(
    folder: str | os.PathLike, chunks: Iterable[tuple[Sequence[str], np.ndarray]], manifest: Manifest
) -> EmbeddingStore:
    """Write a store from (keys, (N, dim) array) chunks made elsewhere, one shard per chunk.

    For embeddings computed outside pictag, and for synthetic stores in tests and benchmarks. `manifest` says
    which encoder made them; its count, dtype and completeness are filled in here.
    """
    files = PartStore(folder, SHARD_WRITE_OPTIONS)
    files.makedirs()
    if files.exists(MANIFEST):
        raise PictagError(f"{files.folder} already holds an embedding store: remove it first")
    count = 0
    for i, (keys, embeddings) in enumerate(chunks):
        if embeddings.shape[1] != manifest.dim:
            raise PictagError(f"chunk {i} has {embeddings.shape[1]}-d vectors, the manifest says {manifest.dim}")
        files.write_part(f"part-{i:06d}.parquet", embedding_table(keys, embeddings, manifest.dtype))
        count += len(keys)
    manifest.count, manifest.complete = count, True
    manifest.shards = describe_shards(files)
    manifest.write(folder)
    return EmbeddingStore(folder)


class EmbeddingStore:
    """A finished embedding store, read lazily.

    Args:
        folder: The store written by `pictag embed` (or `pictag.store.embed.embed`): a local folder, a ``file://``
            URL or an fsspec URL (``s3://bucket/emb``).

    Attributes:
        folder: The store's folder: a Path locally, the URL on object storage.
        files: Its files, through the `PartStore` of the job that wrote them (its shards are that job's parts).

    Raises:
        PictagError: not a store, or one whose `pictag embed` run was interrupted.

    Example:
        >>> store = pictag.EmbeddingStore("emb/")
        >>> pictag.classify(None, "results.parquet", labels="cat,dog", embeddings="emb/")
        >>> pictag.search(store, text="a red sports car", k=20)
    """

    def __init__(self, folder: str | os.PathLike):
        self.files = PartStore(folder)
        self.folder = self.files.folder
        self.manifest = Manifest.read(folder)
        if not self.manifest.complete:
            raise PictagError(
                f"embedding store {self.folder} is incomplete (its `pictag embed` run was interrupted): "
                "rerun it with --resume"
            )
        self._verify()
        self._keys: np.ndarray | None = None

    def _verify(self) -> None:
        """Refuse a store whose shard files are not the ones its manifest lists, whole; see the module docstring."""
        m, where = self.manifest, f"embedding store {self.folder}"
        sizes = {name: size for name, size in self.files.sizes().items() if is_part(name)}
        found = set(sizes)
        if m.shards is None:  # written before shards were listed: the footers' row counts must add up
            rows = sum(self._footer_rows(name) for name in found)
            if rows != m.count:
                raise PictagError(f"{where} holds {rows:,} rows, its manifest says {m.count:,}: {_RECREATE}")
            return
        listed = {shard["name"]: shard for shard in m.shards}
        missing, extra = sorted(set(listed) - found), sorted(found - set(listed))
        if missing:
            raise PictagError(
                f"{where} lacks {len(missing)} shard(s) its manifest lists (e.g. {missing[0]}): {_RECREATE}"
            )
        if extra:
            raise PictagError(
                f"{where} has {len(extra)} shard(s) its manifest does not list (e.g. {extra[0]}, copied in?): remove "
                f"them, or {_RECREATE}"
            )
        rows = sum(shard["rows"] for shard in m.shards)
        if rows != m.count:
            raise PictagError(f"{where} lists shards of {rows:,} rows, but a count of {m.count:,}: {_RECREATE}")
        for name, shard in sorted(listed.items()):
            if sizes[name] != shard["bytes"]:
                raise PictagError(
                    f"{where}: shard {name} is {sizes[name]:,} bytes, its manifest says {shard['bytes']:,} (truncated "
                    f"or overwritten): {_RECREATE}"
                )
        try:
            footers = read_footers(self.files, sizes)
        except OSError as exc:  # a shard removed or replaced since the listing
            raise PictagError(f"{where}: its shards cannot be read ({exc}): {_RECREATE}") from None
        for name, shard in sorted(listed.items()):
            if footer_digest(footers[name]) != shard["footer_sha256"]:
                raise PictagError(f"{where}: shard {name} does not match its checksum (overwritten?): {_RECREATE}")

    def _footer_rows(self, name: str) -> int:
        try:
            with self.files.open(name) as f:
                return pq.read_metadata(f).num_rows
        except (OSError, pa.ArrowException) as exc:
            raise PictagError(
                f"embedding store {self.folder}: shard {name} is not readable Parquet "
                f"({' '.join(str(exc).split())}): {_RECREATE}"
            ) from None

    def __bool__(self) -> bool:
        # A store is a thing, not a container of its rows: one of 0 images is still a store, and `if store` must not
        # fall back to another model (or anything else) when it is empty.
        return True

    def __repr__(self) -> str:
        m = self.manifest
        return f"EmbeddingStore({str(self.folder)!r}, {m.count:,} x {m.dim} {m.dtype}, model={m.model!r})"

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def shards(self) -> list[str]:
        """The shard file names, in the order their rows are numbered."""
        return self.files.part_names()

    @property
    def nbytes(self) -> int:
        """Bytes of embeddings (what a pass over the store has to read)."""
        return self.manifest.count * self.manifest.dim * pa.from_numpy_dtype(np.dtype(self.manifest.dtype)).byte_width

    def iter_arrays(
        self, chunk_rows: int = READ_ROWS, shards: Sequence[str] | None = None
    ) -> Iterator[tuple[pa.StringArray, np.ndarray]]:
        """Yield (keys as an Arrow array, embeddings as an (N, dim) numpy view) chunk by chunk, in row order.

        Args:
            chunk_rows: Rows per chunk; memory stays at about one chunk.
            shards: Only these shards, by name (default all).
        """
        for shard in self.shards() if shards is None else shards:
            with self._reading(shard), self.files.open(shard) as f:
                reader = pq.ParquetFile(f, page_checksum_verification=True)
                for batch in reader.iter_batches(batch_size=chunk_rows, columns=["key", "embedding"]):
                    if batch.num_rows:
                        yield batch.column(0), embedding_array(batch.column(1))

    @contextmanager
    def _reading(self, shard: str) -> Iterator[None]:
        """Turn a shard that fails to read (a damaged page, a file changed since the store was opened) into one line."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            raise PictagError(
                f"embedding store {self.folder}: shard {shard} cannot be read ({' '.join(str(exc).split())}): "
                f"{_RECREATE}"
            ) from None

    def shard_rows(self) -> dict[str, int]:
        """The rows of each shard, by name, in row order (from the manifest, or the footers of an older store)."""
        if self.manifest.shards is None:
            return {name: self._footer_rows(name) for name in self.shards()}
        rows = {shard["name"]: shard["rows"] for shard in self.manifest.shards}
        return {name: rows[name] for name in self.shards()}

    def keys(self) -> np.ndarray:
        """Every key, in row order (row i of the store, and id i of its search index)."""
        if self._keys is None:
            columns = []
            for shard in self.shards():
                with self._reading(shard), self.files.open(shard) as f:
                    table = pq.read_table(f, columns=["key"], page_checksum_verification=True)
                columns.append(table.column("key"))
            chunks = [chunk for column in columns for chunk in column.chunks]
            self._keys = pa.chunked_array(chunks, pa.string()).to_numpy(zero_copy_only=False)
        return self._keys

    def labels(self) -> np.ndarray:
        """Every image's label, in row order, in a store of a labelled source.

        Raises:
            PictagError: the store holds no labels.
        """
        if not self.manifest.labelled:
            raise PictagError(
                f"embedding store {self.folder} holds no labels: embed a labelled source (a folder of <class>/ "
                "folders, or a table with a label column) with `pictag embed --labelled`"
            )
        columns = []
        for shard in self.shards():
            with self._reading(shard), self.files.open(shard) as f:
                table = pq.read_table(f, columns=["label"], page_checksum_verification=True)
            columns += table.column("label").chunks
        return pa.chunked_array(columns, pa.string()).to_numpy(zero_copy_only=False)

    def get(self, keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The embeddings of `keys` (float32, in the order found); keys not in the store are left out."""
        wanted = pa.array(list(keys), pa.string())
        found_keys: list[str] = []
        found: list[np.ndarray] = []
        for shard in self.shards():
            with self._reading(shard), self.files.open(shard) as f:
                table = pq.read_table(
                    f, filters=pc.is_in(pc.field("key"), value_set=wanted), page_checksum_verification=True
                )
            if table.num_rows:
                found_keys += table.column("key").to_pylist()
                found.append(embedding_array(table.column("embedding")).astype(np.float32))
        order = {key: i for i, key in enumerate(found_keys)}
        rows = [order[k] for k in keys if k in order]
        matrix = np.concatenate(found) if found else np.empty((0, self.dim), np.float32)
        return [found_keys[i] for i in rows], matrix[rows]

    def gallery(self, encoder: Encoder) -> tuple[torch.Tensor, np.ndarray]:
        """The vectors (a float32 tensor on `encoder`'s device) and labels of a labelled store made by its model, in
        row order: what a kNN head (`pictag.heads.knn.KnnHead.from_labels`) votes with.

        Raises:
            PictagError: a store made by another model, one without labels, or an empty one.
        """
        import torch

        self.check_encoder(encoder)
        labels = self.labels()
        chunks = [as_float32_tensor(vectors) for _, vectors in self.iter_arrays()]
        features = torch.cat(chunks) if chunks else torch.empty(0, self.dim)
        if not len(features):
            raise PictagError(f"the gallery {self.folder} is empty: embed labelled images into it")
        return features.to(encoder.device), labels

    def check_encoder(self, encoder: Encoder, images: bool = False) -> None:
        """Refuse an encoder other than the one that made the store (its text would live in another space).

        Args:
            encoder: The encoder about to be used with the store's embeddings.
            images: The encoder will embed images too, so its preprocessing must match as well.
        """
        m = self.manifest
        if encoder.spec != m.model or encoder.weights_id != m.weights_id:
            raise PictagError(
                f"embedding store {self.folder} was made with {m.model} (weights {m.weights_id}), not {encoder.spec} "
                f"(weights {encoder.weights_id}): use --model {m.model}{_checkpoint_hint(m)} or re-embed"
            )
        if encoder.embed_dim != m.dim:
            raise PictagError(
                f"embedding store {self.folder} holds {m.dim}-d vectors, {encoder.spec} makes "
                f"{encoder.embed_dim}-d ones: re-embed with this model"
            )
        if images and encoder.preprocess.fingerprint != m.preprocess:
            raise PictagError(
                f"embedding store {self.folder} was embedded with preprocessing {m.preprocess}, this encoder uses "
                f"{encoder.preprocess.fingerprint}: use the same model and weights, or re-embed"
            )

    def model_options(
        self, model: str | None = None, checkpoint: str | None = None, random_weights: bool = False
    ) -> tuple[str, str | None, bool]:
        """(model, checkpoint, random_weights) of the encoder that made this store, where the caller gives none.

        Raises:
            PictagError: the store's checkpoint file is gone.
        """
        m = self.manifest
        model = model or m.model
        if checkpoint is None and model == m.model and not random_weights:
            checkpoint = m.checkpoint
        random_weights = random_weights or (m.random_weights and checkpoint is None)
        if checkpoint is not None and not os.path.isfile(checkpoint):
            raise PictagError(f"the store's checkpoint {checkpoint} is gone: pass --checkpoint with the same weights")
        return model, checkpoint, random_weights

    def encoder(
        self,
        model: str | None = None,
        checkpoint: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        images: bool = False,
        random_weights: bool = False,
    ) -> Encoder:
        """The encoder that made this store (model and checkpoint from the manifest unless given), checked.

        Raises:
            PictagError: the given model, checkpoint or random weights are not the ones that made the store.
        """
        from pictag.models.registry import create_model

        model, checkpoint, random_weights = self.model_options(model, checkpoint, random_weights)
        encoder = create_model(
            model,
            checkpoint=checkpoint,
            random_weights=random_weights,
            device=device,
            precision=precision,
        )
        self.check_encoder(encoder, images=images)
        return encoder


def _checkpoint_hint(m: Manifest) -> str:
    return f" --checkpoint {m.checkpoint}" if m.checkpoint else ""
