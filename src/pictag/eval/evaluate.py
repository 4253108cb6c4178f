"""`pictag evaluate`: `evaluate(model, **options)` scores a classifier on labelled images (`--data`, a report from
`pictag.eval.classification`), or measures how well an embedding retrieves its own class (`--query`).

Queries and gallery are splits of a `pictag splits` CSV (``--splits splits.csv --query test --gallery train,val``)
or any two labelled sources (``--query data/test/ --gallery data/train/``); without a gallery each query searches
the other queries (leave-one-out). The images are embedded by the runner (`embed_all`: DataLoader workers, progress,
unreadable images reported), then `pictag.eval.retrieval` searches in chunks. It writes OUT/report.json, a
per-class CSV, a Recall@K plot and a grid of queries with their first five results.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pictag.config import dump_config, load_config, options_of
from pictag.data._io import is_url
from pictag.data.sources import Only, Source, open_source
from pictag.data.splits import read_splits
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.eval.classification import ClassificationReport
from pictag.eval.options import EvaluateConfig
from pictag.eval.retrieval import Overlap, RetrievalMetrics, overlap, retrieval_metrics
from pictag.models.build import build_encoder
from pictag.pipeline.options import ClassifyConfig
from pictag.pipeline.runner import Embedded, embed_all
from pictag.storage.files import atomic_file

SHOWN_RESULTS = 5


@dataclass
class EvaluateResult:
    metrics: RetrievalMetrics
    out: Path
    unreadable: int
    seconds: float
    overlap: Overlap

    def summary(self) -> str:
        m = self.metrics
        scores = "  ".join([*(f"Recall@{k} {v:.4f}" for k, v in m.recall.items()), f"MAP@R {m.map_at_r:.4f}"])
        unreadable = f", {self.unreadable} unreadable (see errors.csv)" if self.unreadable else ""
        lines = [
            scores,
            f"{m.queries:,} queries against {m.gallery:,} gallery images{unreadable} in {self.seconds:.1f} s -> "
            f"{self.out / 'report.json'}",
        ]
        found = self.overlap
        if found.missing:
            lines.append(
                f"only {found.answerable:,} of {found.queries:,} queries have their class in the gallery: "
                f"{len(found.missing)} query class(es) are not in it ({_classes(found.missing)}); their "
                f"{found.queries - found.answerable:,} queries count as misses in Recall@K and are left out of MAP@R"
            )
        return "\n".join(lines)


@dataclass
class _Side:
    """The embedded images of the queries or the gallery, and the source to read them back from for the grid."""

    source: Source
    keys: list[str]
    features: np.ndarray
    labels: list[str]


def evaluate(model: str, **options) -> EvaluateResult | ClassificationReport:
    """With `data=`, score a classifier (`evaluate_classifier`); else embed the queries and the gallery, measure
    Recall@K, MAP@R and per-class recall, and write the report. The Python twin of `pictag evaluate`: options are
    the EvaluateConfig fields (data=, or splits=, query=, ...).

    Raises:
        PictagError: bad options, an empty or unknown split, a source without labels, or a K above the gallery.
    """
    started = time.perf_counter()
    cfg = load_config(EvaluateConfig, model=model, **options)
    if cfg.data and (cfg.query or cfg.splits):
        raise PictagError("--data scores a classifier, --query and --splits measure retrieval: give one or the other")
    if cfg.data:
        return evaluate_classifier(cfg)
    if not cfg.query:
        raise PictagError(
            "nothing to evaluate: give --data DIR|TABLE (a classifier's accuracy) or --query (retrieval Recall@K)"
        )
    given = [name for name in ("labels", "labels_file", "images") if getattr(cfg, name)]
    if given:
        raise PictagError(f"--{given[0].replace('_', '-')} goes with --data (a classifier's accuracy), not --query")
    ks = parse_ks(cfg.recall_at)
    out = _report_folder(cfg)
    leave_one_out = cfg.gallery is None
    sides = _open_splits(cfg) if cfg.splits else _open_sources(cfg)  # every input checked before any embedding
    encoder = build_encoder(
        cfg,
    )
    workers = default_workers(encoder.device) if cfg.workers is None else cfg.workers
    errors: list[tuple[str, str]] = []

    def embed(source: Source, wanted: frozenset[str] | None, desc: str) -> Embedded:
        embedded = embed_all(
            source,
            encoder,
            batch_size=cfg.batch_size,
            workers=workers,
            skip=Only(wanted) if wanted is not None else frozenset(),
            max_pixels=cfg.max_pixels,
            max_aspect_ratio=cfg.max_aspect_ratio,
            decode=cfg.decode,
            desc=desc,
        )
        errors.extend(embedded.errors)
        return embedded

    if cfg.splits:
        (source, query_keys), gallery_keys = sides
        embedded = embed(source, query_keys | gallery_keys, "embed")
        query = _pick(source, embedded, query_keys)
        gallery = query if leave_one_out else _pick(source, embedded, gallery_keys)
    else:
        query_source, gallery_source = sides
        query = _pick(query_source, embed(query_source, None, "embed queries"))
        gallery = query if leave_one_out else _pick(gallery_source, embed(gallery_source, None, "embed gallery"))
    for side, name in ((query, "--query"), (gallery, "--gallery")):
        if not side.keys:
            raise PictagError(f"no image of {name} could be read: see the errors above, or check the images")
    found = overlap(query.labels, gallery.labels, leave_one_out=leave_one_out)
    if not found.answerable:
        raise PictagError(_nothing_to_find(found, leave_one_out))
    metrics = retrieval_metrics(
        query.features,
        query.labels,
        gallery.features,
        gallery.labels,
        ks,
        leave_one_out=leave_one_out,
        keep_top=min(SHOWN_RESULTS, len(gallery.keys) - leave_one_out),
    )
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - started
    report = {
        **{f"recall@{k}": v for k, v in metrics.recall.items()},
        "map@r": metrics.map_at_r,
        "queries": metrics.queries,
        "gallery": metrics.gallery,
        "leave_one_out": leave_one_out,
        "queries_with_class_in_gallery": found.answerable,
        "query_classes_not_in_gallery": len(found.missing),
        "model": cfg.model,
        "unreadable": len(errors),
        "seconds": round(seconds, 3),
    }
    with atomic_file(out / "report.json", "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    _write_per_class(metrics, ks, out / "per_class.csv")
    if errors:
        with atomic_file(out / "errors.csv", "w") as f:
            csv.writer(f).writerows([("key", "error"), *errors])
    from pictag.eval.plots import plot_recall_at_k, plot_retrievals

    plot_recall_at_k(metrics.recall, out / "recall_at_k.png", title=f"{cfg.model}: {metrics.queries:,} queries")
    shown = np.random.default_rng(cfg.seed).choice(len(query.keys), min(cfg.examples, len(query.keys)), False)
    # Each image shown is (side, key, label), side 0 the queries and 1 the gallery.
    rows = [
        ((0, query.keys[i], query.labels[i]), [(1, gallery.keys[j], gallery.labels[j]) for j in metrics.neighbours[i]])
        for i in sorted(shown)
    ]
    plot_retrievals(rows, _thumbnails([query, gallery], rows), out / "retrievals.png")
    dump_config(cfg, out / "config.yaml")
    return EvaluateResult(metrics, out, len(errors), seconds, found)


def evaluate_classifier(cfg: EvaluateConfig) -> ClassificationReport:
    """Classify `cfg.data` with `classify`'s own job (parts, resume, errors) into OUT/predictions.parquet, with
    the 5 best labels of each image, then score the predictions against the data's labels and write the report.

    Raises:
        PictagError: bad options, data without labels or with classes the model does not know, or a finished
            report folder (pass `overwrite`) or an interrupted one (pass `resume`).
    """
    from pictag.eval.classification import Truth
    from pictag.pipeline.classify import classify
    from pictag.prompts import parse_labels

    out = _report_folder(cfg)
    # Every option classify shares with evaluate, except --gallery: a retrieval gallery here, a kNN vote there.
    shared = {f.name for f in fields(ClassifyConfig)} & {f.name for f in fields(EvaluateConfig)} - {"gallery"}
    options = {name: getattr(cfg, name) for name in shared}
    if cfg.labels_file:  # read once: the report checks them, then classify uses them (a pipe reads only once)
        options |= {"labels": parse_labels(cfg.labels, cfg.labels_file), "labels_file": None}
    predictions = ClassifyConfig(**options | {"source": cfg.data, "out": str(out / "predictions.parquet"), "top_k": 5})
    truth = Truth.of(predictions, cfg.label_column or "label")  # unknown classes refused before any model is loaded
    classified = classify(**options_of(predictions))
    report = truth.report(classified.out, classified.errors, out)
    dump_config(cfg, out / "config.yaml")
    return report


def _report_folder(cfg: EvaluateConfig) -> Path:
    from pictag.models.run_dir import is_run_dir

    if cfg.out is None and not is_run_dir(cfg.model):
        raise PictagError(f"--out is needed: {cfg.model} is not a run directory to write the report inside")
    return Path(cfg.out) if cfg.out else Path(os.path.expanduser(cfg.model)) / "eval"


def _classes(counts: dict[str, int], shown: int = 3) -> str:
    listed = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items())[:shown])
    return listed + (f" and {len(counts) - shown} more" if len(counts) > shown else "")


def _nothing_to_find(found: Overlap, leave_one_out: bool) -> str:
    """Why every query would score 0, and how to get numbers that mean something."""
    if leave_one_out:
        return (
            f"every query class has a single image ({_classes(found.missing)}): leave-one-out has nothing to find; "
            "give classes several images, or a --gallery with images of the query classes"
        )
    return (
        f"none of the {len(found.missing)} query classes is in the gallery ({_classes(found.missing)}): Recall@K "
        "would be 0 by construction. For open-set numbers (classes never trained on), leave out --gallery: each "
        "query searches the other queries (leave-one-out); for closed-set numbers, split by id (pictag splits "
        "--by id) so that the gallery holds images of the query classes"
    )


def parse_ks(text: str | Sequence[int]) -> list[int]:
    """ "1,5" or a list, as sorted distinct positive ints."""
    try:
        ks = sorted({int(k) for k in (text.split(",") if isinstance(text, str) else text)})
    except ValueError:
        raise PictagError(f"--recall-at {text!r}: give comma-separated numbers, e.g. 1,5") from None
    if not ks or ks[0] < 1:
        raise PictagError(f"--recall-at {text!r}: every K must be at least 1")
    return ks


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _open_splits(cfg: EvaluateConfig) -> tuple[tuple[Source, frozenset[str]], frozenset[str]]:
    """The splits CSV as one labelled source, and the keys of the query splits and of the gallery splits."""
    table = read_splits(cfg.splits)
    query_names, gallery_names = _names(cfg.query), _names(cfg.gallery or "")
    table.select(query_names)
    if gallery_names:
        table.select(gallery_names)
    shared = [name for name in query_names if name in gallery_names]
    if shared:
        raise PictagError(
            f"--query and --gallery both name split {shared[0]!r}: leave --gallery out to evaluate one split "
            "leave-one-out, or name other splits"
        )
    # The CSV is a labelled table: its path column as keys, class as labels, id and split in each record's meta.
    source = open_source(cfg.splits, labelled=True, label_column="class")
    split_of = {
        key: annotation.meta["split"]
        for shard in source.shards()
        for key, annotation in zip(shard.paths(), shard.annotations, strict=True)
    }
    query = frozenset(key for key, split in split_of.items() if split in query_names)
    gallery = frozenset(key for key, split in split_of.items() if split in gallery_names)
    return (source, query), gallery


def _open_sources(cfg: EvaluateConfig) -> tuple[Source, Source | None]:
    opened = []
    for uri in (cfg.query, cfg.gallery):
        if uri is not None and not is_url(uri) and not os.path.exists(uri):
            raise PictagError(f"{uri} does not exist: give a labelled folder or table, or split names with --splits")
        opened.append(
            None if uri is None else open_source(uri, labelled=True, label_column=cfg.label_column or "label")
        )
    return opened[0], opened[1]


def _pick(source: Source, embedded: Embedded, keys: frozenset[str] | None = None) -> _Side:
    rows = [i for i, key in enumerate(embedded.keys) if keys is None or key in keys]
    features = embedded.features[rows].numpy()
    return _Side(source, [embedded.keys[i] for i in rows], features, [str(embedded.labels[i]) for i in rows])


def _thumbnails(sides: Sequence[_Side], rows: list) -> dict:
    """The images the grid shows, read back from their sources (only those keys), as small RGB thumbnails."""
    from pictag.eval.plots import thumbnails

    wanted = {(side, key) for query, results in rows for side, key, _ in [query, *results]}
    return {
        (number, key): picture
        for number, side in enumerate(sides)
        for key, picture in thumbnails(side.source, (key for s, key in wanted if s == number)).items()
    }


def _write_per_class(metrics: RetrievalMetrics, ks: Sequence[int], path: Path) -> None:
    with atomic_file(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "queries", *(f"recall@{k}" for k in ks)])
        for label, row in sorted(metrics.per_class.items()):
            writer.writerow([label, row["queries"], *(f"{row[k]:.4f}" for k in ks)])
