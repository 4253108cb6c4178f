"""The stages every batch job shares: units → records → decoded uint8 crops (in DataLoader workers) → embeddings (in
this process) → rows (the job's head) → one committed part per unit.

Workers own reading and decoding; this process owns the model. A worker's failure on one record becomes a
(key, reason) error travelling with the batch, so a bad image never stops a batch or the run. Batches may span
units; each batch says which rows belong to which unit, and which units its worker has finished, so that a unit's
part is committed as soon as its last row is in.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import time
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from pictag.data.crops import DecodedImages, Decoder, batch_failure
from pictag.data.decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from pictag.data.fast_decode import Decode
from pictag.data.sources import Source, open_source
from pictag.errors import PictagError
from pictag.models.base import Encoder
from pictag.models.build import build_encoder
from pictag.models.engines.agreement import HELD_OUT
from pictag.pipeline.plan import Unit, plan_units


@dataclass
class CropBatch:
    """Decoded images of one batch, and the records of it that failed.

    Attributes:
        labels: The label of each key's record (labelled sources), else None; `texts` likewise.
        units: Ordinal of the unit of each key; `error_units` likewise for `errors`.
        finished: Units whose last record is in this batch or an earlier one.
        failure: Why a worker could not read (a `PictagError`'s one line); the run stops with it.
    """

    keys: list[str] = field(default_factory=list)
    crops: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0, 0, 3, dtype=torch.uint8))  # (N, H, W, 3)
    errors: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    error_units: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    failure: str | None = None


@dataclass
class EmbeddingBatch:
    """Normalised embeddings of one batch, the records of it that failed, and the units they belong to."""

    keys: list[str]
    features: torch.Tensor  # (N, D) float32, on the encoder's device
    errors: list[tuple[str, str]]
    labels: list[str | None] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    error_units: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)

    def by_unit(self) -> Iterator[tuple[int, EmbeddingBatch]]:
        """The batch cut into one piece per unit (a worker reads a unit's records in order, so each is a run)."""
        for unit in dict.fromkeys([*self.units, *self.error_units]):
            start = self.units.index(unit) if unit in self.units else 0
            piece = slice(start, start + self.units.count(unit))
            failed = [e for e, u in zip(self.errors, self.error_units) if u == unit]
            yield (
                unit,
                EmbeddingBatch(self.keys[piece], self.features[piece], failed, self.labels[piece], self.texts[piece]),
            )


class UnitViews(Sequence):
    """The records of units to read, in order, as `DecodedImages` views: position → ((unit, position in unit),).

    Computed from the units' sizes, so memory grows with the units, not their records; a skip set lists each
    unit's keys once, here, so that skipped records are never read and batches stay full.
    """

    def __init__(self, units: Sequence[Unit], skip: Container[str] = frozenset()):
        if skip:
            self.kept = [[i for i, key in enumerate(unit.shard.record_keys()) if key not in skip] for unit in units]
        else:
            self.kept = [range(unit.size) for unit in units]
        self.ends = list(itertools.accumulate(len(kept) for kept in self.kept))

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, position: int) -> tuple[tuple[int, int]]:
        unit = bisect.bisect_right(self.ends, position)
        start = self.ends[unit - 1] if unit else 0
        return ((unit, self.kept[unit][position - start]),)


def crop_batches(
    units: Sequence[Unit],
    decoder: Decoder,
    batch_size: int,
    workers: int = 0,
    skip: Container[str] = frozenset(),
    pin_memory: bool = False,
) -> Iterator[CropBatch]:
    """The records of `units` not in `skip`, in order, as batches of crops decoded in `workers` processes.

    Reading goes through `pictag.data.crops.DecodedImages`, the dataset every image path shares: a batch's run of
    records in one unit is one sequential read. Each batch names the units it finished, so that a unit's part is
    committed as soon as its last row is in; a unit with nothing to read is finished with the batch that passes it.

    Raises:
        PictagError: a unit that could not be read at all (its one line, raised in this process).
    """
    views = UnitViews(units, skip)
    ordinals = [unit.ordinal for unit in units]
    order = BatchSampler(SequentialSampler(range(len(views))), batch_size, drop_last=False)
    loader = DataLoader(
        DecodedImages([unit.shard for unit in units], views, decoder),
        batch_sampler=order,
        num_workers=min(workers, len(order)),
        collate_fn=functools.partial(_crop_batch, ordinals=ordinals, size=decoder.preprocess.size),
        pin_memory=pin_memory,
        prefetch_factor=4 if workers and len(order) else None,
    )
    done, read = 0, 0
    batches = iter(loader)
    try:
        for batch in batches:
            if batch.failure is not None:
                raise PictagError(batch.failure)
            read += len(batch.keys) + len(batch.errors)
            while done < len(units) and views.ends[done] <= read:
                batch.finished.append(ordinals[done])
                done += 1
            yield batch
    finally:
        # The workers are stopped here (an error in a worker or in this process, or the consumer closing the
        # generator) rather than left, with their queues and threads, to the interpreter's exit: an audit saw that
        # abort 2 runs in 6 after the error's one line (exit 134, "terminate called without an active exception").
        shutdown = getattr(batches, "_shutdown_workers", None)  # only the multi-process iterator has workers
        if shutdown is not None:
            shutdown()
    if done < len(units):  # nothing left to read: every unit left is empty
        yield CropBatch(crops=torch.empty(0, *decoder.preprocess.size, 3, dtype=torch.uint8), finished=ordinals[done:])


def _crop_batch(items: list[dict], ordinals: list[int], size: tuple[int, int]) -> CropBatch:
    if (failure := batch_failure(items)) is not None:
        return CropBatch(failure=failure)
    batch, crops = CropBatch(), []
    for item in items:
        unit = ordinals[item["view"][0]]
        if item["crop"] is None:
            batch.errors.append(item["error"])
            batch.error_units.append(unit)
        else:
            crops.append(item["crop"])
            batch.keys.append(item["key"])
            batch.labels.append(item["label"])
            batch.texts.append(item["text"])
            batch.units.append(unit)
    batch.crops = torch.stack(crops) if crops else torch.empty(0, *size, 3, dtype=torch.uint8)
    return batch


@dataclass
class ImageFeatures:
    """The decode and model stages: embeddings of the images of units, decoded in `workers` processes.

    Attributes:
        encoder: The model; its preprocessing runs in the workers.
        batch_size: Images per forward pass.
        max_pixels: Images above this many pixels are refused as decompression bombs.
        skip: Keys to leave out, never read.
        normalize: L2-normalise the embeddings; False gives the raw pooled features a model's own classifier
            takes (see `Head.normalized_input`).
        max_aspect_ratio: Images longer than this many times their width (or wider) are refused.
        decode: "exact" reproduces the model's reference preprocessing; "fast" crops JPEGs with
            `pictag.data.fast_decode`.
    """

    encoder: Encoder
    batch_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    skip: Container[str] = frozenset()
    normalize: bool = True
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    decode: Decode = "exact"

    def batches(self, units: Sequence[Unit], workers: int, stats: dict[str, float]) -> Iterator[EmbeddingBatch]:
        """Embed every record of `units`; `stats` gains the seconds waited for images and spent in the model."""
        encoder = self.encoder
        decoder = Decoder(encoder.preprocess, None, self.max_pixels, self.max_aspect_ratio, self.decode)
        crops = crop_batches(units, decoder, self.batch_size, workers, self.skip, encoder.device.type == "cuda")
        waited = time.perf_counter()
        for batch in crops:
            started = time.perf_counter()
            stats["data_s"] = stats.get("data_s", 0.0) + started - waited
            if batch.keys:
                pixels = encoder.preprocess.normalize(batch.crops.to(encoder.device, non_blocking=True))
                features = encoder.encode_image(pixels, normalize=self.normalize)
            else:
                features = torch.empty(0, encoder.embed_dim, device=encoder.device)
            waited = time.perf_counter()
            stats["model_s"] = stats.get("model_s", 0.0) + waited - started
            yield EmbeddingBatch(
                batch.keys,
                features,
                batch.errors,
                batch.labels,
                batch.texts,
                batch.units,
                batch.error_units,
                batch.finished,
            )


def iter_embeddings(
    source: Source,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    workers: int = 0,
    skip: Container[str] = frozenset(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stats: dict | None = None,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    decode: Decode = "exact",
) -> Iterator[EmbeddingBatch]:
    """Embed every record of a source not in `skip`, in batches.

    Args:
        source: Where the images are.
        encoder: The model; its preprocessing is applied in the workers.
        batch_size: Images per forward pass.
        workers: DataLoader processes decoding in parallel; 0 decodes in this process.
        skip: Keys already done; their bytes are not even read.
        max_pixels: Images above this many pixels are refused as decompression bombs.
        stats: If given, filled with seconds spent waiting for data ("data_s") and in the model ("model_s").
        max_aspect_ratio: Images longer than this many times their width (or wider) are refused.
        decode: "exact" reproduces the model's reference preprocessing; "fast" decodes JPEGs approximately, faster.
    """
    stage = ImageFeatures(encoder, batch_size, max_pixels, skip, max_aspect_ratio=max_aspect_ratio, decode=decode)
    return stage.batches(plan_units(source), workers, stats if stats is not None else {})


@dataclass
class Embedded:
    """Every embedding of a source, in memory, for jobs that fit on them (few-shot, probes, calibration).

    Attributes:
        keys: Keys of the embedded records, in source order.
        features: (N, D) float32 embeddings on the CPU.
        errors: (key, reason) of the records that could not be embedded.
        labels: The label of each embedded record (labelled sources), else None.
    """

    keys: list[str]
    features: torch.Tensor
    errors: list[tuple[str, str]]
    labels: list[str | None]


def embed_all(
    source: Source,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    workers: int = 0,
    skip: Container[str] = frozenset(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "embed",
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    decode: Decode = "exact",
) -> Embedded:
    """Embed every record of a source not in `skip` into memory, with a progress bar; see `iter_embeddings`."""
    from tqdm.auto import tqdm

    keys, chunks, errors, labels = [], [torch.empty(0, encoder.embed_dim)], [], []
    total = None if skip else len(source)  # a skip set's size within the source is unknown
    with tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, disable=None) as bar:
        batches = iter_embeddings(
            source,
            encoder,
            batch_size=batch_size,
            workers=workers,
            skip=skip,
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
            decode=decode,
        )
        for batch in batches:
            keys += batch.keys
            chunks.append(batch.features.cpu())
            errors += batch.errors
            labels += batch.labels
            bar.update(len(batch.keys) + len(batch.errors))
    return Embedded(keys, torch.cat(chunks), errors, labels)


def stage_encoder(cfg, source: Source | None = None) -> Encoder:
    """The encoder of a job's config (its model and engine options), built by `pictag.models.build_encoder`.

    For --quantize int8 the job hands the model its calibration images, the first of `source`, and the head
    agreement is measured over: a zero-shot head of the config's labels, where it has some.
    """
    calibration = []
    if cfg.quantize:
        if source is None:
            raise PictagError("--quantize int8 calibrates on the job's own images: it needs a SOURCE")
        calibration = first_records(source, cfg.calibration_images + HELD_OUT)
        if not calibration:
            raise PictagError("--quantize int8: the source has no readable image to calibrate on")
    return build_encoder(
        cfg,
        engine=cfg.engine,
        quantize=cfg.quantize,
        calibration=calibration,
        calibration_images=cfg.calibration_images,
        head=functools.partial(
            labels_head, *(getattr(cfg, name, None) for name in ("labels", "labels_file", "templates"))
        ),
        min_agreement=cfg.min_agreement,
        strict=cfg.strict,
        batch_size=cfg.batch_size,
    )


def labels_head(labels: str | None, labels_file: str | None, templates: str | None, encoder: Encoder):
    """The zero-shot head of a job's labels, to measure int8's agreement over; None for jobs without labels."""
    if not (labels or labels_file) or not encoder.has_text:
        return None
    from pictag.heads.zero_shot import ZeroShotClassifier
    from pictag.prompts import parse_labels

    # Built from the torch encoder: the prototypes land in the disk cache the job's own head then reads.
    return ZeroShotClassifier(encoder, parse_labels(labels, labels_file), templates)


def first_records(source: Source, count: int) -> list[tuple[str, bytes]]:
    """(key, bytes) of the first `count` readable records of a source, in plan order; nothing is decoded."""
    found = []
    for unit in plan_units(source):
        for record in unit.shard.read():
            if record.data:
                found.append((record.key, record.data))
                if len(found) == count:
                    return found
    return found


def sample_pixels(source: Source, encoder: Encoder, count: int, batch_size: int = 64) -> torch.Tensor:
    """The first `count` decodable images of a source (in plan order), preprocessed: (N, 3, H, W) float32."""
    crops, total = [], 0
    for batch in crop_batches(plan_units(source), Decoder(encoder.preprocess), batch_size):
        if batch.keys:
            crops.append(batch.crops[: count - total])
            total += len(crops[-1])
        if total >= count:
            break
    height, width = encoder.preprocess.size
    if not crops:
        return torch.empty(0, 3, height, width)
    return encoder.preprocess.normalize(torch.cat(crops))


def image_features(cfg, label_column: str | None = None) -> tuple[Encoder, list[Unit], ImageFeatures]:
    """(encoder, units, feature stage) of a config naming a source, a model and the runtime options.

    With a `label_column`, the source is opened labelled (a table's labels from that column, a folder's from its
    class folders), and each batch carries its labels.
    """
    source = open_source(
        cfg.source,
        index=cfg.index,
        path_column=cfg.path_column,
        index_columns=cfg.index_columns,
        labelled=bool(label_column),
        label_column=label_column or "label",
    )
    encoder = stage_encoder(cfg, source)
    features = ImageFeatures(
        encoder, cfg.batch_size, cfg.max_pixels, max_aspect_ratio=cfg.max_aspect_ratio, decode=cfg.decode
    )
    return encoder, plan_units(source, cfg.unit_size), features
