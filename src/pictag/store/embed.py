"""`pictag embed`: `embed(source, out, **options) -> EmbedResult` embeds a source once into an embedding store,
resumably."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from pictag.config import dump_config, load_config
from pictag.data._io import is_url
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.executors import executor_for
from pictag.pipeline.job import RUN_FILE, Job, JobResult, Run, run_job
from pictag.pipeline.runner import EmbeddingBatch, image_features
from pictag.storage.lock import LOCK_FILE
from pictag.storage.parts import ERRORS_SCHEMA, PartStore
from pictag.storage.tables import write_table
from pictag.store.options import EmbedConfig
from pictag.store.store import (
    DTYPES,
    MANIFEST,
    SHARD_WRITE_OPTIONS,
    Manifest,
    describe_shards,
    embedding_table,
    shard_schema,
)

# Options that change what the stored vectors are: a resumed run must keep them.
_RESULT_DEFINING = (
    "source",
    "index",
    "index_columns",
    "path_column",
    "model",
    "checkpoint",
    "random_weights",
    "dtype",
    "unit_size",
    "engine",
    "quantize",
    "calibration_images",
    "decode",
    "labelled",
    "label_column",
)


class EmbedResult(JobResult):
    @property
    def embedded(self) -> int:
        return self.rows


def embed(source: str, out: str, **options) -> EmbedResult:
    """Embed every image of `source` into the store `out`, committing shards as it goes; the Python twin of
    `pictag embed`: options are the EmbedConfig fields (model=, dtype=, resume=, ...).

    Raises:
        PictagError: bad input, or a store that exists (pass `overwrite`) or was interrupted (pass `resume`).
    """
    started = time.perf_counter()
    cfg = load_config(EmbedConfig, source=source, out=out, **options)
    if cfg.dtype not in DTYPES:
        raise PictagError(f"--dtype must be one of {', '.join(DTYPES)}, not {cfg.dtype!r}")
    out = cfg.out if is_url(cfg.out) else Path(cfg.out)  # a URL stays a string: Path would fold its "//"
    # The store's shards are the job's parts: one per unit of work, in plan order. Every file of the store is
    # written and read through them, locally and on object storage alike.
    files = PartStore(out, SHARD_WRITE_OPTIONS)
    has_manifest = files.exists(MANIFEST)
    # A folder with pictag's lock is a store being written (its manifest comes after the model loads), and one with
    # a run file is an interrupted one (on object storage the lease goes when the process exits): the run decides.
    foreign = not (files.exists(LOCK_FILE) or files.exists(RUN_FILE)) and bool(files.names())
    if not has_manifest and foreign and not cfg.overwrite:
        raise PictagError(f"{out} exists and is not an embedding store: choose an empty or new folder")
    with Run(files, out, complete=has_manifest and Manifest.read(out).complete) as output:
        output.start(cfg, _RESULT_DEFINING, resume=cfg.resume, overwrite=cfg.overwrite)
        if cfg.overwrite:
            for name in [MANIFEST, "errors.csv", "config.yaml", *(n for n in files.names() if n.startswith("index."))]:
                files.delete(name)
        encoder, units, features = image_features(cfg, cfg.label_column if cfg.labelled else None)
        output.check_inputs(cfg, weights_id=encoder.weights_id, units=units)
        manifest = Manifest(
            model=encoder.spec,
            weights_id=encoder.weights_id,
            preprocess=encoder.preprocess.fingerprint,
            dim=encoder.embed_dim,
            dtype=cfg.dtype,
            source=cfg.source,
            index=cfg.index,
            index_columns=cfg.index_columns,
            path_column=cfg.path_column,
            checkpoint=str(Path(cfg.checkpoint).resolve()) if cfg.checkpoint else None,
            random_weights=cfg.random_weights,
            labelled=cfg.labelled,
        )
        manifest.write(out)
        config_out = dump_config(cfg, files.url("config.yaml"))

        rows, schema = embedding_rows(cfg, encoder)
        workers = default_workers(encoder.device) if cfg.workers is None else cfg.workers
        job = Job("embed", units, features, rows, schema, files, workers, ROWS_RECIPE, cfg)
        stats = run_job(job, executor_for(cfg))
        errors_out, manifest.errors = write_table(files.url("errors.csv"), files.tables(errors=True), ERRORS_SCHEMA)
        manifest.shards = describe_shards(files)
        manifest.count = sum(shard["rows"] for shard in manifest.shards)
        manifest.complete = True
        manifest.write(out)
        output.finish()
        seconds = time.perf_counter() - started
        return EmbedResult(
            "embedded", out, errors_out, config_out, manifest.count, manifest.errors, seconds, stats.timings()
        )


ROWS_RECIPE = "pictag.store.embed:embedding_rows"


def embedding_rows(cfg: EmbedConfig, encoder) -> tuple[Callable[[EmbeddingBatch], pa.Table], pa.Schema]:
    """The rows stage of `cfg` on `encoder`: each unit's shard rows and their schema (how Ray actors build it)."""

    def rows(batch: EmbeddingBatch) -> pa.Table:
        labels = batch.labels if cfg.labelled else None
        return embedding_table(batch.keys, batch.features.cpu().numpy(), cfg.dtype, labels)

    return rows, shard_schema(encoder.embed_dim, cfg.dtype, cfg.labelled)
