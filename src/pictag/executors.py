"""Which executor runs a batch job: in this process, or on a Ray cluster.

The choice lives above both: the pipeline defines the in-process executor and knows nothing of Ray, and the Ray
executor (`pictag.distributed`) is built on the pipeline, so a job's pipeline never imports its own executor.
"""

from __future__ import annotations

from typing import Any

from pictag.pipeline.job import Executor, InProcessExecutor


def executor_for(cfg: Any) -> Executor:
    """The executor a config's `ExecutorOptions` name (in-process when it has none); Ray is imported only for Ray."""
    if getattr(cfg, "executor", "inprocess") == "inprocess":
        return InProcessExecutor()
    from pictag.distributed.ray_executor import RayExecutor

    return RayExecutor.from_options(cfg)
