"""`pictag fewshot`: label the query images of few-shot tasks from their support images, with
`fewshot(test_dir, out, **options)`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from pictag.config import dump_config, load_config, sibling
from pictag.data.sources import Only, open_source
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.fewshot.options import FewshotConfig
from pictag.fewshot.tasks import Task, find_tasks
from pictag.heads.base import FEW_SHOT, Head, check_head, create_head
from pictag.heads.trained import FINETUNED, finetuned_head, read_trained_head
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models.base import Encoder
from pictag.models.build import build_encoder
from pictag.pipeline.runner import embed_all
from pictag.storage.tables import TableWriter, output_format

log = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema(
    [("task", pa.string()), ("image", pa.string()), ("label", pa.string()), ("score", pa.float32())]
)
ERRORS_SCHEMA = pa.schema([("task", pa.string()), ("image", pa.string()), ("reason", pa.string())])
TASKS_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("method", pa.string()),
        ("classes", pa.int32()),
        ("support", pa.int32()),
        ("queries", pa.int32()),
        ("support_accuracy", pa.float32()),
    ]
)


@dataclass
class FewshotResult:
    out: Path
    errors_out: Path
    tasks_out: Path
    config_out: Path
    tasks: int
    predicted: int
    errors: int
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.tasks} task(s), {self.predicted:,} query images labelled in {self.seconds:.1f} s -> {self.out}; "
            f"per-task method and support accuracy -> {self.tasks_out}; {self.errors:,} unreadable -> "
            f"{self.errors_out}"
        )


def fewshot(test_dir: str, out: str, **options) -> FewshotResult:
    """Fit a head on each task's support images and label its query images; the Python twin of `pictag fewshot`:
    options are the FewshotConfig fields (method=, model=, checkpoint=, ...).

    All images of all tasks are embedded in one pass over the test folder; then each task is a small fit on
    cached features. Unreadable images go to the errors file; a support class left without a readable image is
    an error, since its class could never be predicted.

    Raises:
        PictagError: bad layout, unknown method, an existing output without `overwrite`, or an empty class.
    """
    started = time.perf_counter()
    cfg = load_config(FewshotConfig, test_dir=test_dir, out=out, **options)
    out = Path(cfg.out)
    output_format(out)
    if out.exists() and not cfg.overwrite:
        raise PictagError(f"{out} already exists: pass --overwrite to replace it")
    trained = _trained_head(cfg)
    tasks = find_tasks(cfg.test_dir)
    encoder = build_encoder(
        cfg,
    )
    config_out = dump_config(cfg, sibling(out, ".config.yaml"))
    features, unreadable = _embed(cfg, tasks, encoder)
    for task in tasks:
        _check_readable_support(task, features)

    results, errors, summaries = (
        TableWriter(out),
        TableWriter(sibling(out, ".errors.csv")),
        TableWriter(sibling(out, ".tasks.csv")),
    )
    predicted = failed = 0
    for task in tqdm(tasks, desc="tasks", unit="task", dynamic_ncols=True, disable=None):
        task_errors = [
            (task.name, _image_name(task, key), unreadable[key]) for key, _ in task.support if key in unreadable
        ]
        task_errors += [(task.name, task.query_name(key), unreadable[key]) for key in task.query if key in unreadable]
        if task_errors:
            errors.write(pa.table(list(zip(*task_errors)), schema=ERRORS_SCHEMA))
            failed += len(task_errors)
        head, queries = _fit_task(task, cfg, encoder, features, trained)
        if queries:
            results.write(_predictions(task, head, queries, features))
            predicted += len(queries)
        method = getattr(head, "chosen_name", head.name)
        swept = getattr(getattr(head, "chosen", head), "sweep", None)  # the linear probe's C, a kNN vote's k
        if swept is not None:
            log.info("%s: %s with %s", task.name, method, swept.describe())
        method = f"auto:{method}" if cfg.method == "auto" else method
        support_count = sum(key in features for key, _ in task.support)
        summaries.write(
            pa.table(
                [[task.name], [method], [len(task.classes)], [support_count], [len(queries)], [head.support_accuracy]],
                schema=TASKS_SCHEMA,
            )
        )
    results.close(RESULT_SCHEMA)
    errors.close(ERRORS_SCHEMA)
    summaries.close(TASKS_SCHEMA)
    return FewshotResult(
        out, errors.path, summaries.path, config_out, len(tasks), predicted, failed, time.perf_counter() - started
    )


def _embed(cfg: FewshotConfig, tasks: list[Task], encoder: Encoder) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Embeddings of every support and query image, keyed as in the tasks, and the reasons of unreadable ones."""
    wanted = frozenset(key for task in tasks for key in [*(k for k, _ in task.support), *task.query])
    workers = default_workers() if cfg.workers is None else cfg.workers
    embedded = embed_all(
        open_source(cfg.test_dir),
        encoder,
        batch_size=cfg.batch_size,
        workers=workers,
        skip=Only(wanted),
        max_pixels=cfg.max_pixels,
        max_aspect_ratio=cfg.max_aspect_ratio,
        decode=cfg.decode,
    )
    return dict(zip(embedded.keys, embedded.features)), dict(embedded.errors)


def _trained_head(cfg: FewshotConfig) -> dict | None:
    """The fine-tuned head for `--method finetuned`; any other method is checked before any image is read."""
    if cfg.method != FINETUNED:
        check_head(cfg.method, FEW_SHOT)
        return None
    trained = read_trained_head(cfg.checkpoint) if cfg.checkpoint else None
    if trained is None:
        raise PictagError(
            "--method finetuned needs --checkpoint FILE from `pictag fewshot-train` (it stores the trained head)"
        )
    return trained


def _fit_task(
    task: Task, cfg: FewshotConfig, encoder: Encoder, features: dict[str, torch.Tensor], trained: dict | None
) -> tuple[Head, list[str]]:
    support = [(key, label) for key, label in task.support if key in features]
    text = None
    if encoder.has_text:
        # Folder names are prompts: "golden_retriever" reads as "golden retriever".
        names = [cls.replace("_", " ") for cls in task.classes]
        text = ZeroShotClassifier(encoder, names, cfg.templates).prototypes.cpu()
    head = finetuned_head(trained, task.classes) if trained else create_head(cfg.method)
    head.fit(torch.stack([features[key] for key, _ in support]), torch.tensor([label for _, label in support]), text)
    return head, [key for key in task.query if key in features]


def _check_readable_support(task: Task, features: dict[str, torch.Tensor]) -> None:
    readable = {label for key, label in task.support if key in features}
    empty = [cls for i, cls in enumerate(task.classes) if i not in readable]
    if empty:
        raise PictagError(
            f"task {task.name}: no readable support image in class(es) {', '.join(empty)}: replace the unreadable "
            "images"
        )


def _predictions(task: Task, head: Head, queries: list[str], features: dict[str, torch.Tensor]) -> pa.Table:
    scores, indices = head.scores(torch.stack([features[key] for key in queries])).max(dim=-1)
    columns = [
        [task.name] * len(queries),
        [task.query_name(key) for key in queries],
        [task.classes[i] for i in indices.tolist()],
        scores.tolist(),
    ]
    return pa.table(columns, schema=RESULT_SCHEMA)


def _image_name(task: Task, key: str) -> str:
    return key if task.name == "." else key[len(task.name) + 1 :]
