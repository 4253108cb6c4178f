"""Zero-shot batch classification: `run(ClassifyConfig) -> ClassifyResult`, resumable and streaming."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml
from tqdm.auto import tqdm

from pictag.config import dump_config, load_config, sibling
from pictag.data.decode import DEFAULT_MAX_PIXELS
from pictag.data.sources import open_source
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.heads.zero_shot import UNKNOWN, ZeroShotClassifier, load_templates, parse_labels
from pictag.models.registry import create_model, default_model
from pictag.pipeline.parts import PartWriter, TableWriter, check_output_format
from pictag.pipeline.runner import iter_embeddings

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
)


@dataclass
class ClassifyConfig:
    """Everything `pictag classify` takes; see `pictag classify --help` for each option."""

    source: str | None = None
    out: str | None = None
    labels: list[str] | str | None = None
    labels_file: str | None = None
    templates: str = "simple"
    model: str = field(default_factory=default_model)
    checkpoint: str | None = None
    random_weights: bool = False
    index: str | None = None
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


@dataclass
class ClassifyResult:
    out: Path
    errors_out: Path
    config_out: Path
    classified: int
    errors: int
    seconds: float

    def summary(self) -> str:
        rate = self.classified / self.seconds if self.seconds else 0.0
        return (
            f"classified {self.classified:,} images in {self.seconds:.1f} s ({rate:.1f} img/s) -> {self.out}; "
            f"{self.errors:,} unreadable -> {self.errors_out}"
        )


def run(cfg: ClassifyConfig) -> ClassifyResult:
    """Classify every image of `cfg.source` against `cfg.labels`, writing CSV/Parquet rows as it goes.

    Raises:
        PictagError: bad input, or an output that exists (pass `overwrite`) or was interrupted (pass `resume`).
    """
    started = time.perf_counter()
    if not cfg.out:
        raise PictagError("no output named: pass --out results.csv (or .parquet)")
    out = Path(cfg.out)
    check_output_format(out)
    if cfg.top_k < 1:
        raise PictagError(f"--top-k must be at least 1, not {cfg.top_k}")
    if cfg.batch_size < 1:
        raise PictagError(f"--batch-size must be at least 1, not {cfg.batch_size}")
    if not cfg.source:
        raise PictagError("no images given: pass a SOURCE (folder, image, tar, shard pattern, table or URL)")
    labels = parse_labels(cfg.labels, cfg.labels_file)
    templates = load_templates(cfg.templates)
    parts = PartWriter(sibling(out, ".parts"), rows_per_part=cfg.commit_every)
    _check_resumable(cfg, out, parts)
    source = open_source(cfg.source, index=cfg.index, path_column=cfg.path_column)
    encoder = create_model(
        cfg.model,
        checkpoint=cfg.checkpoint,
        random_weights=cfg.random_weights,
        device=cfg.device,
        precision=cfg.precision,
    )
    head = ZeroShotClassifier(encoder, labels, templates)
    config_out = dump_config(cfg, sibling(out, ".config.yaml"))
    (parts.folder / "config.yaml").write_text(config_out.read_text())

    done = parts.done_keys()
    top_k = min(cfg.top_k, len(labels))
    workers = default_workers(encoder.device) if cfg.workers is None else cfg.workers
    total = max(len(source) - len(done), 0)
    with tqdm(total=total, unit="img", desc="classify", dynamic_ncols=True, disable=None) as bar:
        for batch in iter_embeddings(
            source, encoder, batch_size=cfg.batch_size, workers=workers, skip=done, max_pixels=cfg.max_pixels
        ):
            scores, indices = head.top_k(batch.features, top_k)
            parts.write(_rows(batch.keys, scores, indices, labels, cfg.threshold, batch.errors, top_k))
            bar.update(len(batch.keys) + len(batch.errors))
    parts.flush()
    classified, errors = _merge(parts, out, sibling(out, ".errors.csv"), top_k)
    parts.remove()
    return ClassifyResult(
        out, sibling(out, ".errors.csv"), config_out, classified, errors, time.perf_counter() - started
    )


def classify(source: str, out: str, labels: list[str] | str | None = None, **options) -> ClassifyResult:
    """Python twin of `pictag classify`: options are the ClassifyConfig fields (model=, top_k=, resume=, ...)."""
    return run(load_config(ClassifyConfig, source=source, out=out, labels=labels, **options))


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


def _rows(keys, scores, indices, labels, threshold, errors, top_k) -> pa.Table:
    scores, indices = scores.cpu().tolist(), indices.cpu().tolist()
    columns: dict[str, list] = {
        "key": keys + [key for key, _ in errors],
        "error": [None] * len(keys) + [reason for _, reason in errors],
        "label": [],
        "score": [],
    }
    for rank in range(top_k):
        columns[f"label_{rank + 1}"] = [labels[row[rank]] for row in indices] + [None] * len(errors)
        columns[f"score_{rank + 1}"] = [row[rank] for row in scores] + [None] * len(errors)
    for label, score in zip(columns["label_1"], columns["score_1"]):
        below = score is not None and threshold is not None and score < threshold
        columns["label"].append(UNKNOWN if below else label)
        columns["score"].append(score)
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
