"""A batch job, and the one runner that executes every job: plan → skip what is done → stages → parts → finish.

    job = Job("classify", units, features, rows, schema, run.parts, workers)
    stats = run_job(job)                  # progress, stage timings, one part per unit
    ...merge run.parts into the output    # the task's own last step

Tasks (classify, embed, ...) only say what differs: where features come from (decoded images or an embedding
store), what a row says (the head), and what happens to the parts at the end. Everything else is here or in
`pictag.pipeline.parts`: the resume guard, the lock, the errors, the resolved config, progress and timings.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import yaml
from tqdm.auto import tqdm

from pictag.errors import PictagError
from pictag.pipeline.parts import ERRORS_SCHEMA, PartStore
from pictag.pipeline.plan import Unit, plan_digest
from pictag.pipeline.runner import EmbeddingBatch

RUN_FILE = "run.yaml"


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
    """

    name: str
    units: list[Unit]
    features: Features
    rows: Callable[[EmbeddingBatch], pa.Table]
    schema: pa.Schema
    parts: PartStore
    workers: int = 0

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

    def timings(self) -> str:
        # Tells the user which side to grow: more --workers when images are waited for, a faster device if not.
        names = {
            "data_s": "waited for images",
            "model_s": "in the model",
            "head_s": "in the head",
            "write_s": "writing",
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
    out: Path
    errors_out: Path
    config_out: Path
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
        for batch in job.features.batches(units, job.workers, stats.stages):
            started = time.perf_counter()
            for ordinal, piece in batch.by_unit():
                if piece.keys:
                    rows[ordinal].append(job.rows(piece))
                errors[ordinal] += piece.errors
                progress(len(piece.keys) + len(piece.errors))
            written = time.perf_counter()
            for ordinal in batch.finished:
                committed, failed = job.commit(by_ordinal[ordinal], rows.pop(ordinal, []), errors.pop(ordinal, []))
                stats.rows += committed
                stats.errors += failed
            stats.stages["head_s"] = stats.stages.get("head_s", 0.0) + written - started
            stats.stages["write_s"] = stats.stages.get("write_s", 0.0) + time.perf_counter() - written
        return stats


def run_job(job: Job, executor: Executor | None = None) -> JobStats:
    """Run the units of `job` that have no committed part, with a progress bar (img/s and ETA)."""
    started = time.perf_counter()
    pending = job.parts.pending(job.units)
    total = sum(unit.size for unit in pending)
    with tqdm(total=total, unit="img", desc=job.name, dynamic_ncols=True, disable=None) as bar:
        stats = (executor or InProcessExecutor()).run(job, pending, bar.update)
    stats.seconds = time.perf_counter() - started
    return stats


class Run:
    """An output being written: its lock, its parts and the resume guard. A context manager: leaving it unlocks.

    The resolved config is saved in the parts folder (run.yaml) when a run starts; a rerun must be asked to
    `resume`, and may only when nothing that defines the results has changed: the guarded options, the weights
    behind the model spec, and the plan of units (the source's records and the unit size).

    Args:
        parts: The job's parts.
        out: The output the user named (for messages).
        complete: Whether `out` is already finished.
    """

    def __init__(self, parts: PartStore, out: str | Path, complete: bool):
        self.parts = parts
        self.out = out
        self.complete = complete
        self._saved: dict | None = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.parts.unlock()

    @property
    def run_file(self) -> Path:
        return self.parts.folder / RUN_FILE

    def start(self, cfg: Any, guarded: Sequence[str], *, resume: bool, overwrite: bool) -> None:
        """Lock the output and decide between a fresh run, a resume and a refusal; cheap checks only.

        Raises:
            PictagError: the output exists or is in use, or an interrupted run is met without `resume`, or with
                changed options.
        """
        if self.complete and not overwrite:
            if resume:
                raise PictagError(f"{self.out} is already complete: nothing to resume (pass --overwrite to run again)")
            raise PictagError(f"{self.out} already exists: pass --overwrite to replace it")
        self.parts.lock()  # before looking for an interrupted run, so that one still going is named as such
        interrupted = self.run_file.is_file()
        if interrupted and not (resume or overwrite):
            raise PictagError(
                f"{self.out} has an interrupted run ({self.parts.folder}): pass --resume to finish it or --overwrite"
            )
        if overwrite:
            self.parts.clear()
            self.run_file.unlink(missing_ok=True)
            return
        if interrupted:
            self._saved = yaml.safe_load(self.run_file.read_text()) or {}
            self._refuse_changed(dataclasses.asdict(cfg), guarded)

    def check_inputs(self, cfg: Any, *, weights_id: str | None, units: Sequence[Unit]) -> None:
        """Refuse a resume whose weights or plan differ, then save what defines this run."""
        identity = {"weights_id": weights_id, "plan": plan_digest(units)}
        if self._saved is not None:
            self._refuse_changed(identity, list(identity))
        self.run_file.write_text(yaml.safe_dump({**dataclasses.asdict(cfg), **identity}, sort_keys=False))

    def finish(self) -> None:
        """The output is complete: nothing is left to resume, and the per-unit errors were merged."""
        self.run_file.unlink(missing_ok=True)
        shutil.rmtree(self.parts.errors_folder, ignore_errors=True)

    def _refuse_changed(self, current: dict, names: Sequence[str]) -> None:
        changed = [name for name in names if name in self._saved and self._saved[name] != current.get(name)]
        if changed:
            words = {"weights_id": "the weights behind the model spec", "plan": "the source's images"}
            raise PictagError(
                f"cannot resume {self.out}: {', '.join(words.get(c, c) for c in changed)} changed since the "
                "interrupted run; use the same options, or --overwrite to start over"
            )
