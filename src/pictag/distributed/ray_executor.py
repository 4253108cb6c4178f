"""The Ray executor: the runner's units on a Ray Data actor pool, each unit committed exactly once by its actor.

    pictag classify SOURCE --labels-file labels.txt --out s3://bucket/out.parquet --executor ray --ray-address auto

The driver (this process) plans the units, takes the output's lock and resume guard (`pictag.pipeline.job.Run`),
and gives the pending units to `Dataset.map_batches` over an actor pool, one unit per call. Each actor builds the
encoder and the head once, from the job's config (a model spec and paths on shared storage; no model is pickled),
runs the same decode and model stages as the in-process executor on its unit, commits the unit's part itself
(`PartStore.commit`: a temporary name unique to the attempt and a rename, or one PUT on object storage) and
returns one small manifest row. The driver only streams those rows: progress, and `_manifest.parquet` at the end.

A unit is done when its part exists, whoever wrote it, so Ray's retries (an actor restarted after its worker or
node was lost, its task run again) and a rerun after the driver died converge on one part per unit, and a run begun
in-process can be finished here, and the other way round.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pictag.errors import PictagError
from pictag.pipeline.job import InProcessExecutor, Job, JobStats, manifest_row, unit_done
from pictag.pipeline.plan import Unit

INSTALL = "--executor ray needs Ray: pip install 'pictag[ray]'"
# Restarts of a lost actor (a dead worker process or node). The unit it was running is retried without a bound
# (Ray Data's own default): the retries of a task on a restarting actor are spent in seconds, while the restart
# (a new process that loads the model) can take longer, so a bound there failed runs that a restart would save.
# A unit's failure in the user's code (a full disk) is not retried: the run fails with its one-line message, and
# --resume continues.
MAX_RETRIES = 4
WAIT_FOR_ACTORS_S = 900

log = logging.getLogger(__name__)


def import_ray():
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise PictagError(INSTALL) from None
    return ray


@dataclass
class RayExecutor:
    """Runs a job's units on a Ray Data actor pool.

    Attributes:
        address: The cluster to join ("auto", "ray://HOST:10001"); None starts a local Ray for this process, or
            uses the one already initialised.
        concurrency: Actors, as (min, max); None sizes the pool to the cluster's CPUs (or GPUs) per actor.
        gpus_per_worker: GPUs reserved by each actor.
        cpus_per_worker: CPUs reserved by each actor.
        actor_workers: DataLoader processes per actor; 0 decodes in the actor.
        max_retries: Restarts of a lost actor (its unit is retried until the pool runs it).
    """

    address: str | None = None
    concurrency: tuple[int, int] | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    actor_workers: int = 0
    max_retries: int = MAX_RETRIES

    @classmethod
    def from_options(cls, cfg: Any) -> RayExecutor:
        """The executor a config's `ExecutorOptions` describe."""
        from pictag.options import concurrency_range

        return cls(
            address=cfg.ray_address,
            concurrency=concurrency_range(cfg.concurrency),
            gpus_per_worker=cfg.gpus_per_worker,
            cpus_per_worker=cfg.cpus_per_worker,
            actor_workers=cfg.actor_workers,
        )

    def run(self, job: Job, units: Sequence[Unit], progress: Callable[[int], None]) -> JobStats:
        """Run `units` on the actor pool; returns what was committed, with one manifest row per unit.

        Raises:
            PictagError: Ray is missing, the job cannot be rebuilt in an actor, or a unit failed (its message).
        """
        ray = import_ray()
        if job.recipe is None or job.config is None:
            raise PictagError(f"{job.name} cannot run with --executor ray: its stages are not built from a config")
        from pictag.pipeline.runner import ImageFeatures

        if not isinstance(job.features, ImageFeatures):
            raise PictagError(f"{job.name} with --executor ray reads images; run jobs over embeddings in-process")
        stats = JobStats()
        if not units:
            return stats
        started = time.perf_counter()
        self._connect(ray)
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts images across the cluster
        # Units go out once the pool's minimum of actors has loaded its model, so that the first actor up does not
        # queue the work of all the others; a cluster that cannot place them fails after this long.
        context.wait_for_min_actors_s = WAIT_FOR_ACTORS_S
        logging.getLogger("ray.data").setLevel(logging.WARNING)

        attempts = _attempt_counter(ray)
        # One block per unit, so that units spread over the actors one at a time, like the in-process workers.
        items = [{"unit": pickle.dumps(unit)} for unit in units]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        low, high = self._pool(ray, len(units))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing `max_restarts` and `max_task_retries` through `**ray_remote_args` but has
            # no named parameter for them yet; the pin in pyproject (ray < 2.64) keeps them working until it does.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            results = self._map(ray, dataset, job, attempts, low, high)
        try:
            for row in results.iter_rows():
                if not stats.manifest:  # start-up: the cluster's actors loading their model, and one unit
                    stats.stages["first_unit_s"] = time.perf_counter() - started
                stats.stages["actors_s"] = stats.stages.get("actors_s", 0.0) + row["seconds"]
                stats.rows += row["rows"]
                stats.errors += row["errors"]
                stats.manifest.append({k: row[k] for k in _MANIFEST_KEYS})
                progress(row["rows"] + row["errors"])
                unit_done(progress)
                job.parts.renew_lock()
        except Exception as exc:  # Ray wraps the actor's exception (several levels deep); show the user's line
            raise _user_error(exc) from None
        return stats

    def _map(self, ray, dataset, job: Job, attempts: Any, low: int, high: int):
        """The actor pool over `dataset`'s units: one unit per call, each actor built from the job's config."""
        return dataset.map_batches(
            UnitActor,
            batch_size=1,
            # One unit running and one queued per actor: no idle gap between units, and little queued on one actor.
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=2),
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker or None,
            max_restarts=self.max_retries,
            max_task_retries=-1,
            fn_constructor_kwargs={
                "name": job.name,
                "recipe": job.recipe,
                "config": job.config,
                "parts": job.parts.location,
                "write_options": job.parts.write_options,
                "workers": self.actor_workers,
                "attempts": attempts,
                # The driver's decode and model options (precision of features, skips, limits), minus its model.
                "feature_options": {
                    f.name: getattr(job.features, f.name)
                    for f in dataclasses.fields(job.features)
                    if f.name not in ("encoder", "skip")
                },
            },
        )

    def _connect(self, ray) -> None:
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if self.address is None:
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=self.address, **kwargs)
        except ConnectionError as exc:
            raise PictagError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None

    def _pool(self, ray, units: int) -> tuple[int, int]:
        """(min, max) actors: as asked, else as many as the cluster's GPUs or CPUs fit, never more than units."""
        if self.concurrency is not None:
            low, high = self.concurrency
            return min(low, units), min(high, units)
        resources = ray.cluster_resources()
        if self.gpus_per_worker:
            fit = resources.get("GPU", 0) / self.gpus_per_worker
        else:
            fit = resources.get("CPU", 0) / self.cpus_per_worker if self.cpus_per_worker else units
        size = max(1, min(units, int(fit)))
        return size, size


_MANIFEST_KEYS = ("ordinal", "unit", "rows", "errors", "node", "seconds", "attempt", "executor")


class UnitActor:
    """One actor of the pool: builds the stages once, then runs and commits one unit per call.

    Args:
        name: The job's name.
        recipe: "module:function" building (rows, schema) from (config, encoder).
        config: The task's config: the model spec and checkpoint path the encoder is built from.
        parts: Where parts go (a shared folder or URL).
        write_options: The parts' Parquet options.
        workers: DataLoader processes decoding for this actor.
        attempts: The run's attempt counter (an actor handle).
        feature_options: The driver's `ImageFeatures` fields other than its encoder.
    """

    def __init__(
        self,
        name: str,
        recipe: str,
        config: Any,
        parts: str,
        write_options: dict,
        workers: int,
        attempts: Any,
        feature_options: dict,
    ):
        import ray

        from pictag.data.sources import open_source
        from pictag.pipeline.runner import ImageFeatures, stage_encoder
        from pictag.storage.parts import PartStore

        # int8 calibrates on the source's first images, as the driver did (the same images, so the same model).
        source = None
        if getattr(config, "quantize", None):
            source = open_source(
                config.source, index=config.index, path_column=config.path_column, index_columns=config.index_columns
            )
        encoder = stage_encoder(config, source)
        module, function = recipe.split(":")
        rows, schema = getattr(importlib.import_module(module), function)(config, encoder)
        features = ImageFeatures(encoder, **feature_options)
        self.job = Job(name, [], features, rows, schema, PartStore(parts, write_options), workers)
        self.node = ray.get_runtime_context().get_node_id()
        self.attempts = attempts

    def __call__(self, batch: dict) -> dict:
        import ray

        out: dict[str, list] = {key: [] for key in _MANIFEST_KEYS}
        for blob in batch["unit"]:
            unit = pickle.loads(blob)
            # Counted while the unit runs: a round trip to the head actor before it would add to every unit's time.
            counted = self.attempts.start.remote(unit.ordinal)
            started = time.perf_counter()
            stats = InProcessExecutor().run(self.job, [unit], lambda n: None)
            try:
                attempt = ray.get(counted)
            except ray.exceptions.RayError:  # the count is for the manifest only: never fail a unit over it
                attempt = 0
            row = manifest_row(unit, stats.rows, stats.errors, self.node, time.perf_counter() - started, attempt, "ray")
            for key in _MANIFEST_KEYS:
                out[key].append(row[key])
        return out


def _attempt_counter(ray):
    from pictag.distributed._attempts import Attempts

    # On the head node (as Ray Train places its state actor), whose loss ends the cluster anyway: a worker node
    # lost mid-run must not take the counter with it. 0 CPUs, so it never takes an actor's place.
    on_head = {"node:__internal_head__": 0.001}
    return ray.remote(Attempts).options(num_cpus=0, resources=on_head, max_restarts=-1, max_task_retries=-1).remote()


def _user_error(exc: BaseException) -> BaseException:
    """The PictagError inside Ray's wrappers, if any (its message is the user's one line); else `exc` itself."""
    seen, stack = set(), [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # RayTaskError keeps the actor's own exception here
        if isinstance(current, PictagError) and cause is None:
            return current
        stack += [e for e in (cause, current.__cause__, current.__context__) if e is not None]
    return exc
