"""Zero-shot batch classification: `run(ClassifyConfig) -> ClassifyResult`, resumable and streaming."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from tqdm.auto import tqdm

from pictag.config import dump_config, load_config, sibling
from pictag.data.decode import DEFAULT_MAX_PIXELS
from pictag.data.sources import open_source
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.heads.calibration import Calibration
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models.registry import create_model, default_model
from pictag.pipeline.parts import PartWriter, TableWriter, check_output_format
from pictag.pipeline.runner import iter_embeddings
from pictag.prompts import UNKNOWN, load_templates, parse_labels
from pictag.store.store import EmbeddingStore

log = logging.getLogger(__name__)

ERRORS_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string())])
# Options that change what a result row says: a resumed run must keep them.
_RESULT_DEFINING = (
    "source",
    "index",
    "labels",
    "labels_file",
    "templates",
    "model",
    "checkpoint",
    "top_k",
    "threshold",
    "embeddings",
    "calibration",
)


@dataclass
class ClassifyConfig:
    """Everything `pictag classify` takes; see `pictag classify --help` for each option."""

    source: str | None = None
    out: str | None = None
    labels: list[str] | str | None = None
    labels_file: str | None = None
    templates: str = "simple"
    model: str | None = None  # default_model(), or the model of `embeddings`
    checkpoint: str | None = None
    random_weights: bool = False
    index: str | None = None
    index_columns: str | None = None  # e.g. "key=filename,offset=start,size=length"; known names are recognised
    path_column: str = "path"
    top_k: int = 1
    threshold: float | None = None
    batch_size: int = 64
    workers: int | None = None
    device: str | None = None
    precision: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    overwrite: bool = False
    commit_every: int = 8192
    embeddings: str | None = None  # an embedding store (`pictag embed`) to classify instead of `source`
    calibration: str | None = None  # temperature and per-class thresholds from `pictag calibrate`


@dataclass
class ClassifyResult:
    out: Path
    errors_out: Path
    config_out: Path
    classified: int
    errors: int
    seconds: float
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        rate = self.classified / self.seconds if self.seconds else 0.0
        line = (
            f"classified {self.classified:,} images in {self.seconds:.1f} s ({rate:.1f} img/s) -> {self.out}; "
            f"{self.errors:,} unreadable -> {self.errors_out}"
        )
        if self.stage_seconds:
            # Tells the user which side to grow: more --workers when images are waited for, a faster device if not.
            line += f" (waited {self.stage_seconds['data_s']:.1f} s for images, {self.stage_seconds['model_s']:.1f} s in the model)"
        return line


def run(cfg: ClassifyConfig) -> ClassifyResult:
    """Classify every image of `cfg.source` against `cfg.labels`, writing CSV/Parquet rows as it goes.

    Raises:
        PictagError: bad input, or an output that exists (pass `overwrite`) or was interrupted (pass `resume`).
    """
    started = time.perf_counter()
    if not cfg.out:
        raise PictagError("no output named: pass --out results.csv (or .parquet)")
    if cfg.source and cfg.embeddings:
        raise PictagError("give either a SOURCE of images or --embeddings STORE (from `pictag embed`), not both")
    out = Path(cfg.out)
    check_output_format(out)
    if cfg.top_k < 1:
        raise PictagError(f"--top-k must be at least 1, not {cfg.top_k}")
    if cfg.batch_size < 1:
        raise PictagError(f"--batch-size must be at least 1, not {cfg.batch_size}")
    if not cfg.source and not cfg.embeddings:
        raise PictagError(
            "no images given: pass a SOURCE (folder, image, tar, shard pattern, table or URL) or --embeddings STORE"
        )
    labels = parse_labels(cfg.labels, cfg.labels_file)
    templates = load_templates(cfg.templates)
    store = EmbeddingStore(cfg.embeddings) if cfg.embeddings else None
    cfg = dataclasses.replace(cfg, model=cfg.model or (store.manifest.model if store else default_model()))
    parts = PartWriter(sibling(out, ".parts"), rows_per_part=cfg.commit_every)
    _check_resumable(cfg, out, parts)
    done = parts.done_keys()
    stage_seconds: dict[str, float] = {}
    encoder, batches, total = _embeddings(cfg, store, done, stage_seconds)
    head = ZeroShotClassifier(encoder, labels, templates)
    calibration = Calibration.load(cfg.calibration) if cfg.calibration else None
    if calibration is not None:
        calibration.check(encoder.spec, encoder.weights_id, labels, head.templates)
    thresholds = _thresholds(cfg.threshold, calibration, labels)
    temperature = calibration.temperature if calibration else 1.0
    config_out = dump_config(cfg, sibling(out, ".config.yaml"))
    (parts.folder / "config.yaml").write_text(config_out.read_text())

    top_k = min(cfg.top_k, len(labels))
    with tqdm(total=total, unit="img", desc="classify", dynamic_ncols=True, disable=None) as bar:
        for batch in batches:
            scores, indices = head.top_k(batch.features, top_k, temperature)
            parts.write(_rows(batch.keys, scores, indices, labels, thresholds, batch.errors, top_k))
            bar.update(len(batch.keys) + len(batch.errors))
    parts.flush()
    classified, errors = _merge(parts, out, sibling(out, ".errors.csv"), top_k)
    parts.remove()
    return ClassifyResult(
        out, sibling(out, ".errors.csv"), config_out, classified, errors, time.perf_counter() - started, stage_seconds
    )


def classify(source: str | None, out: str, labels: list[str] | str | None = None, **options) -> ClassifyResult:
    """Python twin of `pictag classify`: options are the ClassifyConfig fields (model=, top_k=, resume=, ...).

    With `embeddings="emb/"` (and `source=None`) the rows come from an embedding store; no image is decoded.
    """
    return run(load_config(ClassifyConfig, source=source, out=out, labels=labels, **options))


def _embeddings(cfg: ClassifyConfig, store: EmbeddingStore | None, done: set[str], stats: dict[str, float]):
    """(encoder, EmbeddingBatch iterator, rows to go) from the store, or from decoding the source's images."""
    if store is None:
        return source_embeddings(cfg, done, stats)
    encoder = store.encoder(
        cfg.model, cfg.checkpoint, device=cfg.device, precision=cfg.precision, random_weights=cfg.random_weights
    )
    return encoder, store.iter_batches(skip=done), max(len(store) - len(done), 0)


def source_embeddings(cfg, done: set[str], stats: dict[str, float] | None = None):
    """(encoder, EmbeddingBatch iterator, images to go) for a config naming a source and a model (classify, embed).

    `stats`, if given, is filled with the seconds spent waiting for decoded images and in the model.
    """
    source = open_source(cfg.source, index=cfg.index, path_column=cfg.path_column, index_columns=cfg.index_columns)
    encoder = create_model(
        cfg.model,
        checkpoint=cfg.checkpoint,
        random_weights=cfg.random_weights,
        device=cfg.device,
        precision=cfg.precision,
    )
    workers = default_workers(encoder.device) if cfg.workers is None else cfg.workers
    batches = iter_embeddings(
        source, encoder, batch_size=cfg.batch_size, workers=workers, skip=done, max_pixels=cfg.max_pixels, stats=stats
    )
    return encoder, batches, max(len(source) - len(done), 0)


def _thresholds(threshold: float | None, calibration: Calibration | None, labels: list[str]) -> list[float] | None:
    """Per-label top-1 score thresholds: the calibrated ones, raised to --threshold where that is higher."""
    if calibration is None:
        return None if threshold is None else [threshold] * len(labels)
    return [max(t, threshold or 0.0) for t in calibration.threshold_vector(labels)]


def _check_resumable(cfg: ClassifyConfig, out: Path, parts: PartWriter) -> None:
    interrupted = (parts.folder / "config.yaml").is_file()
    if cfg.overwrite:
        parts.remove()
        parts.folder.mkdir(parents=True)
        return
    if cfg.resume and interrupted:
        before = yaml.safe_load((parts.folder / "config.yaml").read_text())
        changed = [k for k in _RESULT_DEFINING if before.get(k) != dataclasses.asdict(cfg)[k]]
        if changed:
            raise PictagError(
                f"cannot resume {out}: {', '.join(changed)} changed since the interrupted run; "
                "use the same options, or --overwrite to start over"
            )
        return
    if interrupted:
        raise PictagError(f"{out} has an interrupted run ({parts.folder}): pass --resume to finish it or --overwrite")
    if out.exists() and not cfg.resume:
        raise PictagError(f"{out} already exists: pass --overwrite to replace it")
    if out.exists() and cfg.resume:
        raise PictagError(f"{out} is already complete: nothing to resume (pass --overwrite to run again)")


def _rows(keys, scores, indices, labels, thresholds, errors, top_k) -> pa.Table:
    """One part's rows, built column-wise (label names gathered by index), failed keys last with null results."""
    scores, indices = scores.cpu().numpy(), indices.cpu().numpy()
    failed = len(errors)
    names = pa.array([*labels, UNKNOWN], pa.string())
    chosen = indices[:, 0]
    if thresholds is not None:
        chosen = np.where(scores[:, 0] < np.asarray(thresholds, np.float32)[chosen], len(labels), chosen)

    def with_failed(values: pa.Array) -> pa.Array:
        return pa.concat_arrays([values, pa.nulls(failed, values.type)]) if failed else values

    columns = {
        "key": pa.array([*keys, *(key for key, _ in errors)], pa.string()),
        "error": pa.array([None] * len(keys) + [reason for _, reason in errors], pa.string()),
        "label": with_failed(names.take(chosen)),
        "score": with_failed(pa.array(scores[:, 0], pa.float32())),
    }
    for rank in range(top_k):
        columns[f"label_{rank + 1}"] = with_failed(names.take(indices[:, rank]))
        columns[f"score_{rank + 1}"] = with_failed(pa.array(scores[:, rank], pa.float32()))
    return pa.table(columns, schema=_part_schema(top_k))


def _part_schema(top_k: int) -> pa.Schema:
    fields = [("key", pa.string()), ("error", pa.string()), ("label", pa.string()), ("score", pa.float32())]
    for rank in range(1, top_k + 1):
        fields += [(f"label_{rank}", pa.string()), (f"score_{rank}", pa.float32())]
    return pa.schema(fields)


def _merge(parts: PartWriter, out: Path, errors_out: Path, top_k: int) -> tuple[int, int]:
    import pyarrow.compute as pc

    results, errors = TableWriter(out), TableWriter(errors_out)
    classified = failed = 0
    for table in parts.tables():
        failed_mask = pc.is_valid(table.column("error"))
        good = table.filter(pc.invert(failed_mask)).drop_columns(["error"])
        bad = table.filter(failed_mask).select(["key", "error"]).rename_columns(["key", "reason"])
        results.write(good)
        errors.write(bad)
        classified += good.num_rows
        failed += bad.num_rows
    results.close(_part_schema(top_k).remove(1))
    errors.close(ERRORS_SCHEMA)
    return classified, failed
