"""The frozen-feature cache: each image embedded once per view, on disk, for every head trained on frozen features.

    features = split_features(data.train, encoder, cfg, data.skipped)    # a classifier's or arcface's backbone
    cache = cached(key, compute)                                          # fusion's product views and texts

A cache file lives under `$PICTAG_CACHE/features/` and is named after everything its rows depend on (the weights,
the precision, the preprocessing, each image file's path, size and modification time, and any texts), so a stale
file is never used and a rerun, a resumed run or another fold embeds nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

import torch

from pictag.storage.files import atomic_path

CACHE_FOLDER = "features"


def weights_key(encoder) -> str:
    """What names an encoder's weights: its weights id, or a digest of random ones ("random:0" differs by seed)."""
    from pictag.models.base import weights_digest

    # Summing every tensor costs seconds per fold for real towers: only random weights need it.
    return weights_digest(encoder) if "random:" in encoder.weights_id else encoder.weights_id


def at_training_precision(encoder, cfg) -> None:
    """Make `encoder` embed in the precision training runs it in, so that a head fitted on its cached features sees
    what the first training step's forward pass gives."""
    from pictag.train.engine import choose_settings

    precision = choose_settings(cfg, encoder.device).precision
    encoder.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def file_stats(paths) -> list:
    """(path, size, mtime) of each local file; a path that is not a local file stands for itself."""
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
            out.append((path, stat.st_size, stat.st_mtime_ns))
        except (OSError, TypeError, ValueError):
            out.append(path)
    return out


def cached(key: list, compute: Callable[[], dict]) -> dict:
    """The dict of tensors `compute()` makes, read from the cache file named after `key` when there is one.

    `key` must hold everything the result depends on (JSON-serialisable, str() for the rest).
    """
    from pictag.config import cache_dir

    digest = hashlib.sha1(json.dumps(key, default=str).encode()).hexdigest()[:20]
    path = cache_dir() / CACHE_FOLDER / f"{digest}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    # A DataLoader draws its seed from the global generator: embedding (or not, on a cache hit) must leave it as
    # it was, so that what follows starts the same either way.
    with torch.random.fork_rng(devices=[]):
        result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(result, tmp)
    return result


def unreadable(split, found: dict) -> dict[int, tuple[str, str]]:
    """{position: (key, why)} of the images of `split` that `split_features` found no row for."""
    why = {key: reason for key, reason in found["skipped"]}
    rows = set(found["index"].tolist())
    return {p: (key, why.get(key, "unreadable")) for p, key in enumerate(split.keys) if p not in rows}


def _split_files(split) -> list:
    """What identifies each image of a split on disk: its file (in a folder or a table) or its tar."""
    files = []
    for (shard, offset), key in zip(split.refs, split.keys, strict=True):
        source = split.shards[shard]
        if hasattr(source, "root"):
            files.append(os.path.join(source.root, source.keys[offset]) if hasattr(source, "keys") else key)
        else:
            files.append(getattr(source, "tar", key))
    return files


def split_features(split, encoder, cfg, skipped: list | None = None) -> dict[str, torch.Tensor]:
    """{"features": (M, D) the encoder's unnormalised eval-crop features, "index": (M,) positions in the split}
    of every readable image of `split` (unreadable ones go to `skipped` as (key, why)), from the cache, embedded in
    the precision training runs in."""
    at_training_precision(encoder, cfg)
    key = [
        "split",
        weights_key(encoder),
        str(encoder.autocast_dtype),
        asdict(encoder.preprocess),
        split.keys,
        file_stats(_split_files(split)),
    ]
    result = cached(key, partial(_embed_split, split, encoder, cfg))
    if skipped is not None:
        skipped += [tuple(s) for s in result["skipped"]]
    return result


@torch.no_grad()
def _embed_split(split, encoder, cfg) -> dict:
    from torch.utils.data import DataLoader

    from pictag.train.data import collate, split_images
    from pictag.train.engine import choose_settings

    preprocess = encoder.preprocess
    images = DataLoader(
        split_images(split, preprocess.crop, preprocess, 0, cfg.max_pixels),
        batch_size=cfg.batch_size,
        # Training's data workers: decoding in the main process would wait for the forward passes, and they for it.
        num_workers=choose_settings(cfg, encoder.device).workers,
        collate_fn=partial(collate, size=preprocess.size),
    )
    was_training = encoder.training
    encoder.eval()
    chunks, index, skipped = [torch.empty(0, encoder.embed_dim)], [torch.empty(0, dtype=torch.long)], []
    for batch in images:
        skipped += batch["errors"]
        if len(batch["labels"]):
            pixels = preprocess.normalize(batch["images"].to(encoder.device))
            chunks.append(encoder.encode_image(pixels, normalize=False).cpu())
            index.append(batch["index"])
    encoder.train(was_training)
    return {"features": torch.cat(chunks), "index": torch.cat(index), "skipped": skipped}
