"""Batch classification, zero-shot or with a trained run's head: `classify(source, out, labels, **options)`, a job
on the shared runner."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pictag.config import dump_config, load_config, sibling
from pictag.data._io import is_url
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.eval.classification import Truth
from pictag.executors import executor_for
from pictag.heads.base import Head
from pictag.heads.calibration import Calibration
from pictag.heads.knn import KnnHead
from pictag.heads.pretrained import PretrainedHead
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models.base import Encoder
from pictag.models.registry import default_model, parse_spec
from pictag.models.run_dir import read_meta, run_head
from pictag.pipeline.classify_result import ClassifyResult
from pictag.pipeline.job import InProcessExecutor, Job, Run, run_job
from pictag.pipeline.options import ClassifyConfig
from pictag.pipeline.runner import EmbeddingBatch, image_features
from pictag.pipeline.store_features import StoreFeatures, store_units
from pictag.prompts import UNKNOWN, load_templates, parse_labels, read_once
from pictag.storage.files import exists
from pictag.storage.parts import ERRORS_SCHEMA, PartStore
from pictag.storage.tables import output_format, write_table
from pictag.store.store import EmbeddingStore

STDOUT = "-"  # --out -: rows streamed to stdout

# Options that change what a result row says: a resumed run must keep them.
_RESULT_DEFINING = (
    "source",
    "index",
    "index_columns",
    "labels",
    "labels_file",
    "templates",
    "model",
    "checkpoint",
    "top_k",
    "threshold",
    "embeddings",
    "calibration",
    "unit_size",
    "head",
    "engine",
    "quantize",
    "calibration_images",
    "decode",
    "gallery",
    "knn_k",
    "knn_weights",
)


def classify(
    source: str | None = None, out: str | None = None, labels: list[str] | str | None = None, **options
) -> ClassifyResult | Printed:
    """Classify every image of `source` against `labels` (or a trained run's classes), one part per unit; the
    Python twin of `pictag classify`: options are the ClassifyConfig fields (model=, top_k=, resume=, ...).

    With `embeddings="emb/"` (and `source=None`) the rows come from an embedding store; no image is decoded. Without
    `out`, nothing is written: the answers are in the result's `table`. With `images=DIR`, `source` is a product
    table classified by fusion runs (`pictag.pipeline.products`).

    Raises:
        PictagError: bad input, or an output that exists (pass `overwrite`) or was interrupted (pass `resume`).
    """
    started = time.perf_counter()
    cfg = load_config(ClassifyConfig, source=source, out=out, labels=labels, **options)
    labels, labels_file, templates = read_once(cfg.labels, cfg.labels_file, cfg.templates)
    cfg = dataclasses.replace(cfg, labels=labels, labels_file=labels_file, templates=templates)
    # The labels are read, and classes the model does not know refused, before any work.
    truth = Truth.of(cfg, cfg.label_column or "label") if cfg.report else None
    if cfg.images:  # a product table, classified by fusion runs
        from pictag.pipeline.products import classify_products

        return _reported(classify_products(cfg), truth)
    if isinstance(cfg.model, list):
        if len(cfg.model) > 1:
            raise PictagError("several --model are averaged for product tables only (with --images DIR): give one")
        cfg = dataclasses.replace(cfg, model=cfg.model[0] if cfg.model else None)
    if cfg.source and cfg.embeddings:
        raise PictagError("give either a SOURCE of images or --embeddings STORE (from `pictag embed`), not both")
    printed = not cfg.out or cfg.out == STDOUT
    if printed and cfg.resume:
        raise PictagError("--resume finishes an output file: pass --out FILE (answers printed to stdout are not kept)")
    if printed and cfg.report:
        raise PictagError("--report writes its files beside the output: pass --out FILE")
    if not printed:
        if cfg.format == "jsonl":
            raise PictagError(f"--format jsonl prints to stdout: drop --out {cfg.out} (or pass --out -)")
        output_format(cfg.out)
    out = cfg.out if printed or is_url(cfg.out) else Path(cfg.out)  # s3://, gs://, memory://: parts go there
    if not cfg.source and not cfg.embeddings:
        raise PictagError(
            "no images given: pass a SOURCE (folder, image, tar, shard pattern, table or URL) or --embeddings STORE"
        )
    if cfg.gallery:
        _check_gallery(cfg)
    pretrained = cfg.head == "pretrained"
    if pretrained:
        _check_pretrained(cfg)
    store = EmbeddingStore(cfg.embeddings) if cfg.embeddings else None
    # The model that made the images' store, or else the gallery's (with its checkpoint, as search takes it): a
    # gallery is only searched by its own model.
    made_by = store or (EmbeddingStore(cfg.gallery) if cfg.gallery else None)
    if made_by is not None:
        model, checkpoint, random_weights = made_by.model_options(cfg.model, cfg.checkpoint, cfg.random_weights)
        cfg = dataclasses.replace(cfg, model=model, checkpoint=checkpoint, random_weights=random_weights)
    cfg = dataclasses.replace(cfg, model=cfg.model or default_model())
    if not pretrained and not cfg.gallery and (cfg.labels or cfg.labels_file or parse_spec(cfg.model).scheme != "run"):
        # Refused before any output is touched or model loaded.
        parse_labels(cfg.labels, cfg.labels_file)
        load_templates(cfg.templates)
    if printed:
        return _print(cfg, store)
    # Named after the whole file name, so that results.csv and results.parquet never share parts.
    with Run(PartStore(f"{out}.parts"), out, complete=exists(out)) as output:
        output.start(cfg, _RESULT_DEFINING, resume=cfg.resume, overwrite=cfg.overwrite)
        encoder, units, features, rows, schema, head_id = _stages(cfg, store)
        output.check_inputs(cfg, weights_id=encoder.weights_id, units=units, head=head_id)
        config_out = dump_config(cfg, sibling(out, ".config.yaml"))

        workers = default_workers(encoder.device) if cfg.workers is None else cfg.workers
        job = Job("classify", units, features, rows, schema, output.parts, workers, ROWS_RECIPE, cfg)
        stats = run_job(job, executor_for(cfg))
        _, classified = write_table(out, output.parts.tables(), schema)
        errors_out, failed = write_table(sibling(out, ".errors.csv"), output.parts.tables(errors=True), ERRORS_SCHEMA)
        output.finish()
        output.parts.remove()
        seconds = time.perf_counter() - started
        result = ClassifyResult("classified", out, errors_out, config_out, classified, failed, seconds, stats.timings())
        return _reported(result, truth)


def _reported(result: ClassifyResult, truth: Truth | None) -> ClassifyResult:
    """`result`, scored against the source's labels into OUT's .report/ folder when there are labels to score by."""
    if truth is not None:
        result.report = truth.report(result.out, result.errors, sibling(result.out, ".report"))
    return result


class Printed:
    """The answers of a classify run without an output file, printed to stdout: as a table (or JSON lines) once all
    are in, or, streamed (`--out -`), as CSV rows (or JSON lines) as each unit of images finishes.

    Attributes:
        table: Every answer, in the columns of a results file (empty when streamed: memory stays flat).
        rows: How many answers.
        errors: (key, reason) of each image that could not be read; each is also said on stderr.
    """

    def __init__(self, schema: pa.Schema, format: str, stream: bool):
        self.schema = schema
        self.format = format
        self.stream = stream
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.errors: list[tuple[str, str]] = []

    @property
    def table(self) -> pa.Table:
        return pa.concat_tables([self.schema.empty_table(), *self.tables])

    def commit(self, _unit, rows: pa.Table, errors: pa.Table | None) -> None:
        """A finished unit's rows (the executor's sink, as a `PartStore` is for a file output)."""
        for key, reason in zip(*(errors.to_pydict().values())) if errors is not None else ():
            print(f"pictag classify: {key}: {reason}", file=sys.stderr)
            self.errors.append((key, reason))
        if not self.stream:
            self.tables.append(rows)
        elif rows.num_rows:
            sys.stdout.write(self._text(rows, header=not self.rows))
            sys.stdout.flush()
        self.rows += rows.num_rows

    def summary(self) -> str:
        return "" if self.stream else self._text(self.table, header=True).rstrip("\n")

    def _text(self, rows: pa.Table, header: bool) -> str:
        if self.format == "jsonl":
            return "".join(json.dumps({k: _rounded(v) for k, v in row.items()}) + "\n" for row in rows.to_pylist())
        if self.stream:
            buffer = io.BytesIO()
            pacsv.write_csv(rows, buffer, pacsv.WriteOptions(include_header=header))
            return buffer.getvalue().decode()
        cells = [rows.column_names] + [[_cell(v) for v in row.values()] for row in rows.to_pylist()]
        widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
        return "".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() + "\n" for line in cells)


def _rounded(value):
    return round(value, 6) if isinstance(value, float) else value


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print(cfg: ClassifyConfig, store: EmbeddingStore | None) -> Printed:
    """Classify without an output file: no parts, no resume, nothing written but stdout."""
    encoder, units, features, rows, schema, _ = _stages(cfg, store)
    printed = Printed(schema, cfg.format, stream=cfg.out == STDOUT)
    workers = default_workers(encoder.device) if cfg.workers is None else cfg.workers
    if cfg.workers is None and sum(unit.size for unit in units) <= cfg.batch_size:
        workers = 0  # one batch: starting decoding processes would cost more than they save
    job = Job("classify", units, features, rows, schema, printed, workers, ROWS_RECIPE, cfg)
    InProcessExecutor().run(job, units, lambda _records: None)
    if printed.errors and not printed.rows:
        raise PictagError(f"none of the {len(printed.errors)} image(s) could be read (reasons above)")
    return printed


def classification_head(
    encoder: Encoder,
    model: str,
    labels: str | list[str] | None,
    labels_file: str | None,
    templates: str | list[str],
) -> tuple[Head, list[str]]:
    """The head that scores images and its class names: zero-shot over the given labels, or, when none are given,
    a run directory's (`--model RUN`) trained head, or for a clip run zero-shot over the classes it was tuned on.

    Raises:
        PictagError: no labels and no trained head to fall back on.
    """
    if labels or labels_file:
        labels = parse_labels(labels, labels_file)
        return ZeroShotClassifier(encoder, labels, load_templates(templates)), labels
    if parse_spec(model).scheme == "run":
        run = parse_spec(model).name
        meta = read_meta(run)
        if meta.get("task") == "fusion":
            raise PictagError(f"{model} is a fusion run: it classifies product tables, with --images DIR")
        head = run_head(run)
        if head is not None:
            return head.to(encoder.device), list(meta["classes"])
        if meta.get("classes"):  # a clip run: zero-shot over the classes it was fine-tuned on
            return ZeroShotClassifier(encoder, meta["classes"], load_templates(templates)), list(meta["classes"])
        raise PictagError(
            f"{model} is a {meta.get('task')} run with neither a classifier head nor classes: pass --labels a,b,c "
            "or --labels-file FILE"
        )
    return parse_labels(None, None)  # raises: labels are needed


ROWS_RECIPE = "pictag.pipeline.classify:head_rows"


def head_rows(cfg: ClassifyConfig, encoder) -> tuple[Callable[[EmbeddingBatch], pa.Table], pa.Schema]:
    """The head stage of `cfg` on `encoder`: its rows function and their schema (how Ray actors build it)."""
    rows, schema, _, _ = _head_rows(cfg, encoder)
    return rows, schema


def _head_rows(cfg: ClassifyConfig, encoder):
    """(rows function, schema, digest of what the rows depend on) for the labels, templates and calibration."""
    if cfg.head == "pretrained":
        head = PretrainedHead(encoder)
        labels = list(head.classes)
    elif cfg.gallery:
        features, gallery_labels = EmbeddingStore(cfg.gallery).gallery(encoder)
        head, labels = KnnHead.from_labels(features, gallery_labels, cfg.knn_k, cfg.knn_weights)
    else:
        head, labels = classification_head(encoder, cfg.model, cfg.labels, cfg.labels_file, cfg.templates)
    templates = list(getattr(head, "templates", []))
    calibration = Calibration.load(cfg.calibration) if cfg.calibration else None
    if calibration is not None:
        calibration.check(encoder.spec, encoder.weights_id, labels, templates, head.config())
    top_k = min(cfg.top_k, len(labels))
    thresholds = _thresholds(cfg.threshold, calibration, labels)
    temperature = calibration.temperature if calibration else 1.0
    schema = _schema(top_k)
    head_id = hashlib.sha1(
        repr((head.name, labels, templates, thresholds, temperature, top_k, _gallery_id(cfg))).encode()
    ).hexdigest()

    def rows(batch: EmbeddingBatch) -> pa.Table:
        # A store's vectors arrive on the CPU; a trained head sits on the encoder's device.
        scores, indices = head.top_k(batch.features.to(encoder.device), top_k, temperature)
        return _rows(batch.keys, scores, indices, labels, thresholds, schema)

    return rows, schema, head_id[:16], head.normalized_input


def _stages(cfg: ClassifyConfig, store: EmbeddingStore | None):
    """(encoder, units, feature stage, rows function, schema, head digest) of a classify job."""
    encoder, units, features = _features(cfg, store)
    rows, schema, head_id, normalized = _head_rows(cfg, encoder)
    if not normalized:  # a classifier on the backbone's raw features (--head pretrained)
        features = dataclasses.replace(features, normalize=False)
    return encoder, units, features, rows, schema, head_id


def _features(cfg: ClassifyConfig, store: EmbeddingStore | None):
    """(encoder, units, feature stage): the store's vectors, or the source's images decoded and embedded."""
    if store is not None:
        encoder = store.encoder(
            cfg.model, cfg.checkpoint, device=cfg.device, precision=cfg.precision, random_weights=cfg.random_weights
        )
        return encoder, store_units(store), StoreFeatures(store)
    return image_features(cfg)


def _gallery_id(cfg: ClassifyConfig) -> tuple | None:
    """What a gallery's votes depend on: its shards' checksums and the vote's options (None without a gallery)."""
    if not cfg.gallery:
        return None
    shards = EmbeddingStore(cfg.gallery).manifest.shards or []
    return tuple(shard["footer_sha256"] for shard in shards), cfg.knn_k, cfg.knn_weights


def _check_gallery(cfg: ClassifyConfig) -> None:
    """--gallery labels images by their neighbours' labels: no text labels, no model classifier."""
    given = [name for name in ("labels", "labels_file", "head") if getattr(cfg, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise PictagError(f"--gallery labels images by a kNN vote of the gallery's labels and cannot take {flags}")


def _check_pretrained(cfg: ClassifyConfig) -> None:
    """--head pretrained classifies images into the model's own classes: no labels, no store, no calibration."""
    given = [name for name in ("labels", "labels_file", "embeddings", "calibration") if getattr(cfg, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise PictagError(
            f"--head pretrained classifies images into the model's own classes and cannot take {flags}: drop "
            "them (an embedding store holds normalised embeddings, not the features its classifier takes)"
        )


def _thresholds(threshold: float | None, calibration: Calibration | None, labels: list[str]) -> list[float] | None:
    """Per-label top-1 score thresholds: the calibrated ones, raised to --threshold where that is higher."""
    if calibration is None:
        return None if threshold is None else [threshold] * len(labels)
    return [max(t, threshold or 0.0) for t in calibration.threshold_vector(labels)]


def _rows(keys, scores, indices, labels, thresholds, schema: pa.Schema) -> pa.Table:
    """Result rows built column-wise (label names gathered by index)."""
    scores, indices = scores.cpu().numpy(), indices.cpu().numpy()
    names = pa.array([*labels, UNKNOWN], pa.string())
    chosen = indices[:, 0]
    if thresholds is not None:
        chosen = np.where(scores[:, 0] < np.asarray(thresholds, np.float32)[chosen], len(labels), chosen)
    columns = [pa.array(keys, pa.string()), names.take(chosen), pa.array(scores[:, 0], pa.float32())]
    for rank in range(indices.shape[1]):
        columns += [names.take(indices[:, rank]), pa.array(scores[:, rank], pa.float32())]
    return pa.table(columns, schema=schema)


def _schema(top_k: int) -> pa.Schema:
    fields = [("key", pa.string()), ("label", pa.string()), ("score", pa.float32())]
    for rank in range(1, top_k + 1):
        fields += [(f"label_{rank}", pa.string()), (f"score_{rank}", pa.float32())]
    return pa.schema(fields)
