"""A batch job, and the one runner that executes every job: plan → skip what is done → stages → parts → finish.

    job = Job("classify", units, features, rows, schema, run.parts, workers)
    stats = run_job(job)                  # progress, stage timings, one part per unit
    ...merge run.parts into the output    # the task's own last step

Tasks (classify, embed, ...) only say what differs: where features come from (decoded images or an embedding
store), what a row says (the head), and what happens to the parts at the end. Everything else is here or in
`pictag.storage`: the resume guard, the lock, the errors, the resolved config, progress and timings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from pictag.errors import AlreadyComplete, PictagError
from pictag.pipeline.plan import PLAN_FILE, Unit, plan_digest, plan_table
from pictag.pipeline.runner import EmbeddingBatch
from pictag.storage.files import record_beside
from pictag.storage.parts import ERRORS_SCHEMA, PartStore

RUN_FILE = "run.yaml"
MANIFEST_FILE = "_manifest.parquet"
# One row per unit committed by a run: which unit, how many rows and errors, where, how long, which attempt.
MANIFEST_SCHEMA = pa.schema(
    [
        ("ordinal", pa.int64()),
        ("unit", pa.string()),
        ("rows", pa.int64()),
        ("errors", pa.int64()),
        ("node", pa.string()),
        ("seconds", pa.float64()),
        ("attempt", pa.int64()),
        ("executor", pa.string()),
    ]
)


class Features(Protocol):
    """A stage that turns units into `EmbeddingBatch`es tagged with their units (decoded images, or a store)."""

    def batches(self, units: Sequence[Unit], workers: int, stats: dict[str, float]) -> Iterator[EmbeddingBatch]: ...


@dataclass
class Job:
    """Everything a runner needs to execute a batch job.

    Attributes:
        name: What the progress bar says ("classify", "embed").
        units: The whole plan, done units included.
        features: Where each unit's embeddings come from.
        rows: The head stage: the result rows of one unit's piece of a batch.
        schema: The schema of `rows`, for units whose every record failed.
        parts: Where committed parts go.
        workers: Data-loading processes.
        recipe: "module:function" that rebuilds `rows` and `schema` from (config, encoder): how an executor in
            other processes (Ray actors) builds the head from the config rather than receiving a pickled model.
        config: The task's config, given to `recipe` (and the encoder's `create_encoder`).
    """

    name: str
    units: list[Unit]
    features: Features
    rows: Callable[[EmbeddingBatch], pa.Table]
    schema: pa.Schema
    parts: PartStore
    workers: int = 0
    recipe: str | None = None
    config: Any = None

    def commit(self, unit: Unit, rows: list[pa.Table], errors: list[tuple[str, str]]) -> tuple[int, int]:
        """Commit a finished unit's rows and error rows as its part; returns how many of each."""
        table = pa.concat_tables(rows or [self.schema.empty_table()])
        failed = pa.table(list(zip(*errors)), schema=ERRORS_SCHEMA) if errors else None
        self.parts.commit(unit, table, failed)
        return table.num_rows, len(errors)


@dataclass
class JobStats:
    """What a run did: records written and failed in this run, seconds, and seconds per stage."""

    rows: int = 0
    errors: int = 0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    manifest: list[dict] = field(default_factory=list)  # rows of MANIFEST_SCHEMA, one per unit committed

    def timings(self) -> str:
        # Tells the user which side to grow: more --workers when images are waited for, a faster device if not.
        names = {
            "data_s": "waited for images",
            "model_s": "in the model",
            "head_s": "in the head",
            "write_s": "writing",
            "first_unit_s": "until the first unit came back",
            "actors_s": "of actor time",
        }
        return ", ".join(f"{self.stages[k]:.1f} s {v}" for k, v in names.items() if k in self.stages)


@dataclass
class JobResult:
    """What a finished job wrote, for its summary line.

    Attributes:
        out: The output (a file, or an embedding store's folder).
        errors_out: The errors file: key and reason of every record that could not be used.
        config_out: The resolved config; `--config` with it repeats the run.
        rows: Records in the output.
        errors: Records in the errors file.
        seconds: Wall time of this run.
        timings: Seconds per stage, as words.
    """

    verb: str
    out: Path | str
    errors_out: Path | str
    config_out: Path | str
    rows: int
    errors: int
    seconds: float
    timings: str = ""

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        line = (
            f"{self.verb} {self.rows:,} images in {self.seconds:.1f} s ({rate:.1f} img/s) -> {self.out}; "
            f"{self.errors:,} unreadable -> {self.errors_out}"
        )
        return f"{line} ({self.timings})" if self.timings else line


class Executor(Protocol):
    """Runs the given units of a job, committing one part per unit, and reports each record done to `progress`."""

    def run(self, job: Job, units: Sequence[Unit], progress: Callable[[int], None]) -> JobStats: ...


class InProcessExecutor:
    """Runs a job in this process: DataLoader workers decode, this process runs the model and commits the parts."""

    def run(self, job: Job, units: Sequence[Unit], progress: Callable[[int], None]) -> JobStats:
        stats = JobStats()
        by_ordinal = {unit.ordinal: unit for unit in units}
        rows: dict[int, list[pa.Table]] = defaultdict(list)
        errors: dict[int, list[tuple[str, str]]] = defaultdict(list)
        began: dict[int, float] = {}
        node = socket.gethostname()
        for batch in job.features.batches(units, job.workers, stats.stages):
            started = time.perf_counter()
            for ordinal, piece in batch.by_unit():
                began.setdefault(ordinal, started)
                if piece.keys:
                    rows[ordinal].append(job.rows(piece))
                errors[ordinal] += piece.errors
                progress(len(piece.keys) + len(piece.errors))
            written = time.perf_counter()
            for ordinal in batch.finished:
                unit = by_ordinal[ordinal]
                committed, failed = job.commit(unit, rows.pop(ordinal, []), errors.pop(ordinal, []))
                stats.rows += committed
                stats.errors += failed
                seconds = time.perf_counter() - began.pop(ordinal, started)
                stats.manifest.append(manifest_row(unit, committed, failed, node, seconds, 1, "inprocess"))
                unit_done(progress)
            stats.stages["head_s"] = stats.stages.get("head_s", 0.0) + written - started
            stats.stages["write_s"] = stats.stages.get("write_s", 0.0) + time.perf_counter() - written
        return stats


class Progress:
    """What an executor reports to: records done (the bar shows images per second, across a cluster) and units."""

    def __init__(self, bar: tqdm, units: int):
        self.bar = bar
        self.units = units
        self.done = 0

    def __call__(self, records: int) -> None:
        self.bar.update(records)

    def unit_done(self) -> None:
        self.done += 1
        self.bar.set_postfix_str(f"{self.done}/{self.units} units", refresh=False)


def unit_done(progress: Callable[[int], None]) -> None:
    """Tell `progress` a unit was committed, if it counts units (a plain callable only counts records)."""
    if isinstance(progress, Progress):
        progress.unit_done()


def manifest_row(unit: Unit, rows: int, errors: int, node: str, seconds: float, attempt: int, executor: str) -> dict:
    """One row of `_manifest.parquet`: what committing `unit` took, and where."""
    return {
        "ordinal": unit.ordinal,
        "unit": unit.id,
        "rows": rows,
        "errors": errors,
        "node": node,
        "seconds": seconds,
        "attempt": attempt,
        "executor": executor,
    }


def run_job(job: Job, executor: Executor | None = None) -> JobStats:
    """Run the units of `job` that have no committed part, with a progress bar (img/s and ETA).

    Whatever the executor, the pending units are the plan minus the committed parts, so a run started by one
    executor is finished by another; each run adds its units' rows to the parts folder's `_manifest.parquet`.
    """
    started = time.perf_counter()
    pending = job.parts.pending(job.units)
    total = sum(unit.size for unit in pending)
    with tqdm(total=total, unit="img", desc=job.name, dynamic_ncols=True, disable=None) as bar:
        stats = (executor or InProcessExecutor()).run(job, pending, Progress(bar, len(pending)))
    stats.seconds = time.perf_counter() - started
    write_manifest(job.parts, stats.manifest)
    return stats


def write_manifest(parts: PartStore, rows: Sequence[dict]) -> None:
    """Add rows to the parts folder's `_manifest.parquet` (rows of earlier runs of the same output are kept)."""
    if not rows:
        return
    table = pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)
    if parts.exists(MANIFEST_FILE):
        table = pa.concat_tables([read_parquet(parts, MANIFEST_FILE).cast(MANIFEST_SCHEMA), table])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    parts.write_bytes(MANIFEST_FILE, buffer.getvalue())


def read_parquet(parts: PartStore, name: str) -> pa.Table:
    return pq.read_table(io.BytesIO(parts.read_bytes(name)))


class Run:
    """An output being written: its lock, its parts and the resume guard. A context manager: leaving it unlocks.

    The resolved config is saved in the parts folder (run.yaml) when a run starts, with the run's fingerprint: a
    digest of what defines its results (the guarded options, the weights behind the model spec, the head, and the
    plan of units). The plan itself goes beside it, in `_plan.parquet`, under the same fingerprint. A rerun must be
    asked to `resume`, and may only when the fingerprint is the same; otherwise it is refused naming what changed.
    The executor is not part of it: a run started in this process can be finished on a Ray cluster, and back.

    Args:
        parts: The job's parts.
        out: The output the user named (for messages, and where the plan is kept once parts are merged).
        complete: Whether `out` is already finished.
    """

    def __init__(self, parts: PartStore, out: str | Path, complete: bool):
        self.parts = parts
        self.out = out
        self.complete = complete
        self._saved: dict | None = None
        self._guarded: tuple[str, ...] = ()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.parts.unlock()

    @property
    def run_file(self) -> str:
        return self.parts.url(RUN_FILE)

    def start(self, cfg: Any, guarded: Sequence[str], *, resume: bool, overwrite: bool) -> None:
        """Lock the output and decide between a fresh run, a resume and a refusal; cheap checks only.

        Raises:
            PictagError: the output exists or is in use, or an interrupted run is met without `resume`, or with
                changed options; or the output cannot be written.
        """
        self._guarded = tuple(guarded)
        if self.complete and not overwrite:
            if not resume:
                raise PictagError(f"{self.out} already exists: pass --overwrite to replace it")
            # A scheduled rerun of the same command: nothing to do if the options are the same (`check_inputs`
            # then compares the weights, the head and the plan), refused naming them if not.
            self._saved = self._finished_record()
            if self._saved is None:
                raise PictagError(f"{self.out} is already complete: nothing to resume (pass --overwrite to run again)")
            self._refuse_changed(json.loads(json.dumps(dataclasses.asdict(cfg), default=str)), guarded)
            return
        self.parts.lock()  # before looking for an interrupted run, so that one still going is named as such
        interrupted = self.parts.exists(RUN_FILE)
        if interrupted and not (resume or overwrite):
            raise PictagError(
                f"{self.out} has an interrupted run ({self.parts.folder}): pass --resume to finish it or --overwrite"
            )
        if overwrite:
            self.parts.clear()
            for name in (RUN_FILE, PLAN_FILE, MANIFEST_FILE):
                self.parts.delete(name)
            return
        if interrupted:
            self._saved = yaml.safe_load(self.parts.read_bytes(RUN_FILE)) or {}
            self._refuse_changed(dataclasses.asdict(cfg), guarded)

    def check_inputs(self, cfg: Any, *, weights_id: str | None, units: Sequence[Unit], head: str | None = None) -> str:
        """Refuse a resume whose weights, head or plan differ, then save what defines this run; returns its fingerprint.

        Args:
            head: A digest of what the head's rows depend on beyond the options (parsed labels and templates,
                thresholds), so that an edited labels file is noticed too.
        """
        identity = {"weights_id": weights_id, "plan": plan_digest(units)}
        if head is not None:
            identity["head_digest"] = head
        options = dataclasses.asdict(cfg)
        fingerprint = _fingerprint({**{k: options.get(k) for k in self._guarded}, **identity})
        if self._saved is not None:
            self._refuse_changed(identity, list(identity))
            if self._saved.get("fingerprint", fingerprint) != fingerprint:
                raise PictagError(
                    f"cannot resume {self.out}: what defines its results changed since the {self._earlier}; "
                    "use the same options, or --overwrite to start over"
                )
            if self.complete:
                raise AlreadyComplete(f"{self.out} is already complete, with the same options: nothing to resume")
        record = {**options, **identity, "fingerprint": fingerprint}
        self.parts.write_bytes(RUN_FILE, yaml.safe_dump(record, sort_keys=False).encode())
        guarded = json.dumps({k: options.get(k) for k in self._guarded}, default=str)
        metadata = {"fingerprint": fingerprint, "identity": json.dumps(identity), "options": guarded}
        plan = plan_table(units).replace_schema_metadata(metadata)
        buffer = io.BytesIO()
        pq.write_table(plan, buffer)
        self.parts.write_bytes(PLAN_FILE, buffer.getvalue())
        return fingerprint

    def finish(self) -> None:
        """The output is complete: nothing is left to resume, and the per-unit errors were merged.

        When the output is a file merged from the parts, the plan and manifest are kept beside it
        (`NAME.plan.parquet`, `NAME.manifest.parquet` for NAME.csv), where `pictag verify` finds them.
        """
        self.parts.delete(RUN_FILE)
        self.parts.remove_errors()
        if os.fspath(self.out).rstrip("/") != self.parts.location.rstrip("/"):
            for name, suffix in ((PLAN_FILE, ".plan.parquet"), (MANIFEST_FILE, ".manifest.parquet")):
                if self.parts.exists(name):
                    folder, beside = record_beside(self.out, suffix)
                    PartStore(folder).write_bytes(beside, self.parts.read_bytes(name))

    @property
    def _earlier(self) -> str:
        return "run that made it" if self.complete else "interrupted run"

    def _finished_record(self) -> dict | None:
        """What defined a complete output (its guarded options, identity and fingerprint), from the metadata of the
        plan kept with it; None for an output that has no such record."""
        if os.fspath(self.out).rstrip("/") == self.parts.location.rstrip("/"):
            store, name = self.parts, PLAN_FILE
        else:
            folder, name = record_beside(self.out, ".plan.parquet")
            store = PartStore(folder)
        if not store.exists(name):
            return None
        metadata = pq.read_schema(io.BytesIO(store.read_bytes(name))).metadata or {}
        if b"options" not in metadata:
            return None
        identity = json.loads(metadata[b"identity"])
        return {**json.loads(metadata[b"options"]), **identity, "fingerprint": metadata[b"fingerprint"].decode()}

    def _refuse_changed(self, current: dict, names: Sequence[str]) -> None:
        changed = [name for name in names if name in self._saved and self._saved[name] != current.get(name)]
        if changed:
            words = {
                "weights_id": "the weights behind the model spec",
                "plan": "the source's images",
                "head_digest": "the labels, templates or thresholds",
            }
            raise PictagError(
                f"cannot resume {self.out}: {', '.join(words.get(c, c) for c in changed)} changed since the "
                f"{self._earlier}; use the same options, or --overwrite to start over"
            )


def _fingerprint(identity: dict) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
