"""Where a job's units of work run (`ExecutorOptions`), and `pictag verify`'s config.

Plain data: Ray is imported only when `--executor ray` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pictag.config import Checked
from pictag.errors import PictagError


@dataclass(kw_only=True)
class ExecutorOptions(Checked):
    """executor

    Attributes:
        executor: Where units of work run: inprocess (this machine), or ray (an actor pool on a Ray cluster;
            the output must be on storage every node reaches: a shared folder, s3://, gs://).
        ray_address: Ray cluster to join: auto (the one `ray start` made here), ray://HOST:10001, or unset to
            start a local Ray for this run.
        concurrency: Ray actors: N, or MIN,MAX to let the pool grow with the cluster (as many as the cluster's
            CPUs / GPUs fit, when unset).
        gpus_per_worker: GPUs per Ray actor; fractions share a GPU (0.5: two actors per GPU).
        cpus_per_worker: CPUs per Ray actor (its model threads and, with --actor-workers 0, its decoding).
        actor_workers: Data-loading processes per Ray actor (0: the actor decodes its unit itself).
    """

    _at_least: ClassVar[dict[str, int]] = {"actor_workers": 0}

    executor: Literal["inprocess", "ray"] = "inprocess"
    ray_address: str | None = None
    concurrency: str | int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    actor_workers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        concurrency_range(self.concurrency)
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise PictagError("--gpus-per-worker and --cpus-per-worker must be at least 0")


def concurrency_range(value: str | int | None) -> tuple[int, int] | None:
    """(min, max) actors from --concurrency "N" or "MIN,MAX"; None when unset.

    Raises:
        PictagError: anything else.
    """
    if value is None:
        return None
    try:
        numbers = [int(v) for v in str(value).split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 1 or numbers[0] > numbers[-1]:
        raise PictagError(f"--concurrency must be N or MIN,MAX with 1 <= MIN <= MAX, not {value!r}")
    return numbers[0], numbers[-1]


@dataclass(kw_only=True)
class VerifyConfig:
    """Everything `pictag verify` takes.

    Attributes:
        out: The output to check: a classify results file, an embedding store, or a run's parts folder.
    """

    _out: ClassVar[str] = "file or folder"
    _positional: ClassVar[tuple[str, ...]] = ("out",)
    _required: ClassVar[tuple[str, ...]] = ("out",)

    out: str | None = None
