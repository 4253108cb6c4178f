"""Classification of a product table with fusion runs: `pictag classify TABLE --images DIR --model RUN [--model RUN2]`.

Each product's class probabilities are the mean over every model (each fold's best of each run given: runs trained
at other image sizes, or other seeds), and over the test-time views (`--tta flip`: the eval crop and its mirror
image). Towers with the same weights (the folds of a stage-1 run share theirs) embed each product once. It is a
job on the shared runner, so errors, progress, parts and `--resume` work as for any classify.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from pictag.config import dump_config, sibling
from pictag.data.products import ProductSource, embed_views, offsets_of, open_products, pool_views
from pictag.errors import PictagError
from pictag.models.base import weights_digest
from pictag.pipeline.classify_result import ClassifyResult
from pictag.pipeline.job import Job, Run, run_job
from pictag.pipeline.options import ClassifyConfig
from pictag.pipeline.plan import Unit
from pictag.pipeline.runner import EmbeddingBatch
from pictag.storage.files import exists
from pictag.storage.parts import ERRORS_SCHEMA, PartStore
from pictag.storage.tables import output_format, write_table

_RESULT_DEFINING = (
    "source",
    "images",
    "id_column",
    "text_columns",
    "multi_image",
    "missing_image",
    "model",
    "top_k",
    "unit_size",
    "tta",
    "format",
    "probabilities",
)


def model_folders(run: str) -> list[Path]:
    """The models of a run: each fold's best (RUN/fold<i>/), or the run's own.

    Raises:
        PictagError: not a run directory.
    """
    from pictag.models.run_dir import is_run_dir, model_dir

    folds = sorted(p for p in Path(run).glob("fold*") if p.is_dir() and is_run_dir(p))
    return [model_dir(p) for p in folds] if folds else [model_dir(run)]


@dataclass
class Tower:
    """Towers shared by one or more fusion heads (loaded once per distinct weights)."""

    encoder: torch.nn.Module
    heads: list


def load_models(runs: Sequence[str], device: str | None, precision: str | None) -> tuple[list[Tower], list[str]]:
    """The fusion models of `runs` grouped by identical towers, and their common classes.

    Raises:
        PictagError: a run that is not a fusion run, or runs trained on other classes.
    """
    from pictag.models.run_dir import load_run

    towers: dict[str, Tower] = {}
    classes = None
    for run in runs:
        for folder in model_folders(run):
            loaded = load_run(folder, device=device, precision=precision)
            if loaded.meta.get("task") != "fusion" or loaded.head is None:
                raise PictagError(
                    f"--model {run} is a {loaded.meta.get('task')} run: a product table (--images) is classified by "
                    "fusion runs (pictag train --task fusion)"
                )
            if classes is None:
                classes = loaded.classes
            elif loaded.classes != classes:
                raise PictagError(f"--model {folder} was trained on other classes than {runs[0]}: average like runs")
            digest = weights_digest(loaded.encoder) + loaded.encoder.preprocess.fingerprint
            towers.setdefault(digest, Tower(loaded.encoder, [])).heads.append(loaded.head.eval())
    return list(towers.values()), list(classes)


@torch.no_grad()
def product_probabilities(
    source: ProductSource,
    rows: Sequence[int],
    towers: Sequence[Tower],
    *,
    tta: str = "none",
    multi_image: str = "first",
    workers: int = 0,
    batch_size: int = 64,
    max_pixels: int | None = None,
    unreadable: list | None = None,
) -> torch.Tensor:
    """(len(rows), C) class probabilities of the products at `rows`, averaged over every head and TTA view."""
    part = source.select(rows)
    texts = list(part.products.texts)
    offsets = offsets_of(part.products.images)
    total, count = None, 0
    options = {"max_pixels": max_pixels} if max_pixels else {}
    for tower in towers:
        encoder = tower.encoder
        views = embed_views(
            part, encoder, flip=tta == "flip", workers=workers, batch_size=batch_size, skipped=unreadable, **options
        )
        # A random view in training stands for any of them: at inference their mean does.
        text = encoder.encode_text(texts).to(encoder.device)
        for view in views:
            image = pool_views(view, offsets, "first" if multi_image == "first" else "mean_pool").to(encoder.device)
            features = torch.cat([image, text], dim=-1)
            for head in tower.heads:
                probabilities = head(features).float().softmax(dim=-1).cpu()
                total = probabilities if total is None else total + probabilities
                count += 1
    return total / count


class ProductFeatures:
    """The runner's feature stage for product tables: each unit's averaged class probabilities as its features."""

    def __init__(self, source: ProductSource, towers: list[Tower], cfg: ClassifyConfig):
        self.source, self.towers, self.cfg = source, towers, cfg
        self.unreadable: list[tuple[str, str]] = []

    def batches(self, units: Sequence[Unit], workers: int, stats: dict[str, float]) -> Iterator[EmbeddingBatch]:
        for unit in units:
            started = time.perf_counter()
            start, stop = (int(x) for x in unit.id.rpartition(":")[2].split("-"))
            rows = range(start, stop)
            probabilities = product_probabilities(
                self.source,
                rows,
                self.towers,
                tta=self.cfg.tta,
                multi_image=self.cfg.multi_image,
                workers=workers,
                batch_size=self.cfg.batch_size,
                max_pixels=self.cfg.max_pixels,
                unreadable=self.unreadable,
            )
            stats["model_s"] = stats.get("model_s", 0.0) + time.perf_counter() - started
            ids = [self.source.products.ids[r] for r in rows]
            yield EmbeddingBatch(ids, probabilities, [], units=[unit.ordinal] * len(ids), finished=[unit.ordinal])


def product_units(source: ProductSource, unit_size: int) -> list[Unit]:
    """Units of consecutive table rows; a unit's id names its rows."""
    products = source.products
    return [
        Unit(i, f"{products.source}:{start}-{min(start + unit_size, len(products))}", None,
             min(start + unit_size, len(products)) - start)
        for i, start in enumerate(range(0, len(products), unit_size))
    ]  # fmt: skip


def schema_of(cfg: ClassifyConfig, classes: list[str], top_k: int) -> pa.Schema:
    if cfg.format == "submission":
        return pa.schema([("id", pa.string()), ("label", pa.string())])
    fields = [("id", pa.string()), ("label", pa.string()), ("score", pa.float32())]
    for rank in range(1, top_k + 1):
        fields += [(f"label_{rank}", pa.string()), (f"score_{rank}", pa.float32())]
    if cfg.probabilities:
        fields += [(f"p_{name}", pa.float32()) for name in classes]
    return pa.schema(fields)


def rows_function(cfg: ClassifyConfig, classes: list[str], top_k: int, schema: pa.Schema):
    names = pa.array(classes, pa.string())

    def rows(batch: EmbeddingBatch) -> pa.Table:
        probabilities = batch.features.float()
        scores, indices = probabilities.topk(top_k, dim=-1)
        scores, indices = scores.numpy(), indices.numpy()
        columns = [pa.array(batch.keys, pa.string()), names.take(indices[:, 0])]
        if cfg.format != "submission":
            columns.append(pa.array(scores[:, 0], pa.float32()))
            for rank in range(top_k):
                columns += [names.take(indices[:, rank]), pa.array(scores[:, rank], pa.float32())]
            if cfg.probabilities:
                columns += [pa.array(probabilities[:, c].numpy(), pa.float32()) for c in range(len(classes))]
        return pa.table(columns, schema=schema)

    return rows


def classify_products(cfg: ClassifyConfig):
    """Classify every product of `cfg.source` with the fusion runs `cfg.model`; see the module docstring.

    Raises:
        PictagError: bad input (one line), or an output that exists (pass `overwrite`) or was interrupted (`resume`).
    """
    started = time.perf_counter()
    runs = cfg.model if isinstance(cfg.model, list) else [cfg.model] if cfg.model else []
    if not runs:
        raise PictagError("a product table (--images) is classified by fusion runs: pass --model RUN (repeatable)")
    if not cfg.source:
        raise PictagError("no product table given: pass TABLE.csv (id and text columns) with --images DIR")
    if not cfg.out:
        raise PictagError("no output named: pass --out predictions.csv (or .parquet)")
    if cfg.executor != "inprocess":
        raise PictagError("product tables are classified in this process: drop --executor ray")
    if cfg.labels or cfg.labels_file or cfg.embeddings or cfg.head:
        raise PictagError("--images classifies with the fusion runs' own classes: drop --labels/--embeddings/--head")
    out = Path(cfg.out)
    output_format(out)
    source = open_products(
        cfg.source,
        images=cfg.images,
        id_col=cfg.id_column,
        label_col=cfg.label_column,
        text_cols=cfg.text_columns,
        need_label=False,
        need_text=True,
        missing_image=cfg.missing_image,
    )
    cfg = dataclasses.replace(cfg, model=runs)
    with Run(PartStore(f"{out}.parts"), out, complete=exists(out)) as output:
        output.start(cfg, _RESULT_DEFINING, resume=cfg.resume, overwrite=cfg.overwrite)
        towers, classes = load_models(runs, cfg.device, cfg.precision)
        top_k = min(cfg.top_k, len(classes))
        units = product_units(source, cfg.unit_size)
        products = source.products
        content = repr((products.ids, products.texts, products.images, classes, [len(t.heads) for t in towers]))
        weights = "+".join(
            weights_digest(t.encoder) + "/" + weights_digest(torch.nn.ModuleList(t.heads)) for t in towers
        )
        output.check_inputs(cfg, weights_id=weights, units=units, head=hashlib.sha1(content.encode()).hexdigest()[:16])
        config_out = dump_config(cfg, sibling(out, ".config.yaml"))
        schema = schema_of(cfg, classes, top_k)
        features = ProductFeatures(source, towers, cfg)
        job = Job("classify", units, features, rows_function(cfg, classes, top_k, schema), schema, output.parts,
                  cfg.workers or 0, None, cfg)  # fmt: skip
        stats = run_job(job)
        _, classified = write_table(out, output.parts.tables(), schema)
        errors_out, failed = write_table(sibling(out, ".errors.csv"), output.parts.tables(errors=True), ERRORS_SCHEMA)
        output.finish()
        output.parts.remove()
    models = sum(len(t.heads) for t in towers)
    placeholders = len(source.products.missing) + len({path for path, _ in features.unreadable})
    print(
        f"averaged {models} model(s) of {len(runs)} run(s) x {2 if cfg.tta == 'flip' else 1} view(s); "
        f"{placeholders} product image(s) missing or unreadable: black placeholders",
        flush=True,
    )
    seconds = time.perf_counter() - started
    return ClassifyResult("classified", out, errors_out, config_out, classified, failed, seconds, stats.timings())
