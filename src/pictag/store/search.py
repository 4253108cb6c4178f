"""Text and image queries against an embedding store: its saved Faiss index if there is one, else an exact scan."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from pictag.errors import PictagError
from pictag.store.store import EmbeddingStore, Manifest


def search(
    store: EmbeddingStore | str | os.PathLike,
    text: str | Sequence[str] | None = None,
    image: str | os.PathLike | bytes | None = None,
    k: int = 10,
    *,
    search_param: int | None = None,
    paths: bool = False,
    model: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
) -> pa.Table:
    """The k store images nearest to each query.

    Args:
        store: An `EmbeddingStore`, or its folder or URL.
        text: One query text or several.
        image: A query image (path or encoded bytes), embedded with the store's model and preprocessing.
        k: Results per query.
        search_param: nprobe (IVF) or efSearch (HNSW) instead of the tuned value of the saved index.
        paths: Add a `path` column: where each image is (a file path or URL, or `tar://member::archive.tar`).
        model, checkpoint, device: Override the encoder named by the store's manifest (it must still match).

    Returns:
        A table of (query, rank, key, score[, path]), best first per query; score is cosine similarity. Its schema
        metadata "searched_with" says which index answered.
    """
    from pictag.index.faiss_index import VectorIndex, exact_search

    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    if (text is None) == (image is None):
        raise PictagError("give one query: --text TEXT or --image FILE")
    if k < 1:
        raise PictagError(f"--k must be at least 1, not {k}")
    encoder = store.encoder(model, checkpoint, device=device, images=image is not None)
    texts = [text] if isinstance(text, str) else list(text or [])
    if image is not None:
        queries_text = [os.fspath(image) if not isinstance(image, bytes) else "<image>"]
        vectors = _image_query(encoder, image)
    else:
        queries_text = texts
        vectors = encoder.encode_text(texts).cpu().numpy()
    index = VectorIndex.load(store)
    if index is None:
        scores, ids = exact_search(store, vectors, k)
        how = f"exact scan of {len(store):,} vectors (no saved index: `pictag index-embeddings` builds one)"
    else:
        index.set_search_param(search_param)
        scores, ids = index.search(vectors, k)
        params = ", ".join(f"{name}={value}" for name, value in index.info.params.items())
        how = f"{index.info.type} index of {len(store):,} vectors{' (' + params + ')' if params else ''}"
    keys = store.keys()
    columns: dict[str, list] = {"query": [], "rank": [], "key": [], "score": []}
    for q, (row_scores, row_ids) in enumerate(zip(scores, ids)):
        for rank, (score, i) in enumerate(zip(row_scores.tolist(), row_ids.tolist()), start=1):
            if i < 0:  # Faiss pads with -1 when it finds fewer than k
                continue
            columns["query"].append(queries_text[q])
            columns["rank"].append(rank)
            columns["key"].append(str(keys[i]))
            columns["score"].append(score)
    if paths:
        where = locations(store.manifest, columns["key"])
        columns["path"] = [where.get(key) for key in columns["key"]]
    return pa.table(columns).replace_schema_metadata({"searched_with": how})


def _image_query(encoder, image: str | os.PathLike | bytes) -> np.ndarray:
    from pictag.data.decode import DecodeError, decode_image

    if not isinstance(image, bytes):
        if not os.path.isfile(image):
            raise PictagError(f"query image {image} does not exist")
        image = Path(image).read_bytes()
    try:
        decoded = decode_image(image, encoder.preprocess.min_decode_size)
    except DecodeError as exc:
        raise PictagError(f"cannot read the query image: {exc}") from None
    return encoder.encode_image(encoder.preprocess(decoded).unsqueeze(0)).cpu().numpy()


def _file_locations(shard, wanted: set[str]) -> dict[str, str]:
    from pictag.data._io import join

    return {key: join(shard.root, key) for key in shard.keys if key in wanted}


def _tar_locations(shard, wanted: set[str]) -> dict[str, str]:
    members = shard.paths()
    return {shard.prefix + m: f"tar://{m}::{shard.tar}" for m in members if shard.prefix + m in wanted}


def locations(manifest: Manifest, keys: Sequence[str]) -> dict[str, str]:
    """Where the images of `keys` are, found by re-opening the store's source (fsspec-openable paths or URLs)."""
    from pictag.data.sources import FileShard, TarShard, open_source

    if manifest.source is None:
        return {}
    try:
        source = open_source(
            manifest.source,
            index=manifest.index,
            index_columns=manifest.index_columns,
            path_column=manifest.path_column,
        )
    except PictagError as exc:
        raise PictagError(f"cannot show paths: the store's source is not readable here ({exc})") from None
    locators: dict[type, Callable[..., dict[str, str]]] = {FileShard: _file_locations, TarShard: _tar_locations}
    wanted, found = set(keys), {}
    for shard in source.shards():
        if type(shard) in locators:
            found.update(locators[type(shard)](shard, wanted))
    return found
