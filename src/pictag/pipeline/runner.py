"""The stage every job shares: records → decoded uint8 crops (in DataLoader workers) → embeddings (in this process).

Workers own reading and decoding; this process owns the model. A worker's failure on one record becomes a
(key, reason) error travelling with the batch, so a bad image never stops a batch or the run.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pictag.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pictag.data.sources import Source
from pictag.models.base import Encoder
from pictag.models.preprocess import Preprocess


@dataclass
class CropBatch:
    """Decoded images of one batch, and the records of it that failed."""

    keys: list[str]
    crops: torch.Tensor  # (N, H, W, 3) uint8
    errors: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # parallel to keys, from the records
    texts: list[str | None] = field(default_factory=list)


@dataclass
class EmbeddingBatch:
    """Normalised embeddings of one batch, and the records of it that failed."""

    keys: list[str]
    features: torch.Tensor  # (N, D) float32, on the encoder's device
    errors: list[tuple[str, str]]
    labels: list[str | None] = field(default_factory=list)  # parallel to keys, from the records
    texts: list[str | None] = field(default_factory=list)


class CropDataset(IterableDataset):
    """Reads a source's shards, each DataLoader worker its own share, and yields batches of uint8 crops."""

    def __init__(
        self,
        source: Source,
        preprocess: Preprocess,
        batch_size: int,
        skip: Container[str] = frozenset(),
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.source = source
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.skip = skip
        self.max_pixels = max_pixels

    def __iter__(self) -> Iterator[CropBatch]:
        info = get_worker_info()
        shards = self.source.shards()
        if info is not None:
            shards = shards[info.id :: info.num_workers]
        height, width = self.preprocess.size
        keys, crops, errors, labels, texts = [], [], [], [], []
        for shard in shards:
            for record in shard.read(self.skip):
                try:
                    if record.data is None:
                        raise DecodeError(record.error or "unreadable record")
                    image = decode_image(record.data, self.preprocess.min_decode_size, self.max_pixels)
                    crops.append(torch.from_numpy(self.preprocess.crop(image)))
                    keys.append(record.key)
                    labels.append(record.label)
                    texts.append(record.text)
                except DecodeError as exc:
                    errors.append((record.key, str(exc)))
                if len(keys) == self.batch_size:
                    yield CropBatch(keys, torch.stack(crops), errors, labels, texts)
                    keys, crops, errors, labels, texts = [], [], [], [], []
        if keys or errors:
            stacked = torch.stack(crops) if crops else torch.empty(0, height, width, 3, dtype=torch.uint8)
            yield CropBatch(keys, stacked, errors, labels, texts)


def iter_embeddings(
    source: Source,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    workers: int = 0,
    skip: Container[str] = frozenset(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stats: dict | None = None,
) -> Iterator[EmbeddingBatch]:
    """Embed every record of a source not in `skip`, in batches.

    Args:
        source: Where the images are.
        encoder: The model; its preprocessing is applied in the workers.
        batch_size: Images per forward pass.
        workers: DataLoader processes decoding in parallel; 0 decodes in this process.
        skip: Keys already done (resume); their bytes are not even read.
        max_pixels: Images above this many pixels are refused as decompression bombs.
        stats: If given, filled with seconds spent waiting for data ("data_s") and in the model ("model_s").
    """
    dataset = CropDataset(source, encoder.preprocess, batch_size, skip, max_pixels)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    stats = stats if stats is not None else {}
    stats.setdefault("data_s", 0.0)
    stats.setdefault("model_s", 0.0)
    waited = time.perf_counter()
    for batch in loader:
        started = time.perf_counter()
        stats["data_s"] += started - waited
        if batch.keys:
            pixels = encoder.preprocess.normalize(batch.crops.to(encoder.device, non_blocking=True))
            features = encoder.encode_image(pixels)
        else:
            features = torch.empty(0, encoder.embed_dim, device=encoder.device)
        waited = time.perf_counter()
        stats["model_s"] += waited - started
        yield EmbeddingBatch(batch.keys, features, batch.errors, batch.labels, batch.texts)
