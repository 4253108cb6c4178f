"""Where a training run's numbers go besides RUN/metrics.csv (always written, one row per epoch): `--logger`, through
Lightning's loggers, and plain progress lines for logs that are not a terminal.

    csv          Fabric's CSVLogger: RUN/csv/version_N/metrics.csv, every optimiser step (a new version per resume)
    tensorboard  Fabric's TensorBoardLogger: RUN/tb/ (a resume appends to it)
    mlflow       MLFlowLogger: $MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db; experiment "pictag"
    wandb        WandbLogger: project $WANDB_PROJECT, else "pictag" (WANDB_MODE=offline keeps it in RUN/wandb)

Steps are optimiser steps: each step logs train/loss and the learning rates, each epoch its metrics.csv row at the
step it ended on (W&B needs steps that only grow), with "epoch" among them. A resume continues the same MLflow and
W&B run: their ids are kept in last.ckpt.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pictag.errors import PictagError

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")


def parse_loggers(text: str | None) -> list[str]:
    """The loggers of "--logger tensorboard,mlflow" ("none": only metrics.csv).

    Raises:
        PictagError: an unknown name (the known ones are listed).
    """
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in (*LOGGERS, "none")]
    if unknown:
        raise PictagError(f"--logger {text}: unknown {', '.join(unknown)}; use {', '.join(LOGGERS)} or none")
    return [name for name in names if name != "none"]


class Loggers:
    """The `--logger` loggers of one run, on rank 0 (build none elsewhere).

    Args:
        names: From `parse_loggers`.
        out: The run folder.
        ids: {"mlflow": run id, "wandb": run id} of the run being continued (`ids()` of the interrupted one).
    """

    def __init__(self, names: list[str], out: Path, ids: dict | None = None):
        ids = ids or {}
        self.loggers: dict[str, object] = {}
        for name in names:
            try:
                self.loggers[name] = _MAKERS[name](out, ids.get(name))
            except ModuleNotFoundError as exc:
                raise PictagError(f"--logger {name} needs {exc.name}: pip install {exc.name}") from None
            except Exception as exc:  # a tracking store refused (MLflow's raise their own types): say which
                raise PictagError(f"--logger {name}: {str(exc).splitlines()[0]}") from None

    def ids(self) -> dict:
        """What a resume needs to continue the same tracking runs."""
        found = {}
        if "mlflow" in self.loggers:
            found["mlflow"] = self.loggers["mlflow"].run_id
        if "wandb" in self.loggers:
            found["wandb"] = self.loggers["wandb"].experiment.id
        return found

    def log_hyperparams(self, params: dict) -> None:
        for name, logger in self.loggers.items():
            if name != "csv":  # Fabric's CSVLogger takes none; RUN/config.yaml has them
                logger.log_hyperparams(params)

    def log(self, metrics: dict, step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name, logger in self.loggers.items():
            # MLflow's names allow no "@": val_recall@1 becomes val_recall_at_1, not Lightning's val_recall1.
            logger.log_metrics(
                {k.replace("@", "_at_"): v for k, v in numbers.items()} if name == "mlflow" else numbers, step
            )

    def finalize(self, status: str) -> None:
        """Flush and close every logger; `status` is "success" or "failed" (MLflow and W&B record it)."""
        for logger in self.loggers.values():
            logger.finalize(status)
        if "wandb" in self.loggers:
            import wandb

            wandb.finish(exit_code=0 if status == "success" else 1)
        self.loggers = {}


def _csv(out: Path, _id):
    from lightning.fabric.loggers import CSVLogger

    return CSVLogger(out, name="csv")


def _tensorboard(out: Path, _id):
    from lightning.fabric.loggers import TensorBoardLogger

    return TensorBoardLogger(out, name="tb", version="", default_hp_metric=False)


def _mlflow(out: Path, run_id: str | None):
    import mlflow  # noqa: F401  (Lightning's logger says less clearly that it is missing)
    from lightning.pytorch.loggers import MLFlowLogger

    # MLflow's own advice for a local store: SQLite (its file store is refused unless MLFLOW_ALLOW_FILE_STORE=true).
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    return MLFlowLogger(experiment_name="pictag", run_name=out.name, tracking_uri=uri, run_id=run_id)


def _wandb(out: Path, run_id: str | None):
    import wandb  # noqa: F401
    from lightning.pytorch.loggers import WandbLogger

    project = os.environ.get("WANDB_PROJECT", "pictag")
    return WandbLogger(name=out.name, save_dir=str(out), project=project, id=run_id, resume="allow" if run_id else None)


_MAKERS = {"csv": _csv, "tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


class ProgressLines:
    """Plain progress lines of an epoch on stderr, every `every` seconds ("30s") or optimiser steps ("50"), for
    logs that are not a terminal (tqdm's bar is off there, and an epoch would otherwise be silent).

    Args:
        every: From `--log-every`.
        on: Whether to print at all (rank 0, stderr not a terminal).
    """

    def __init__(self, every: str, on: bool):
        self.seconds, self.steps = parse_every(every)
        self.on = on

    def start(self, epoch: int, epochs: int, batches: int, position: int) -> None:
        self.epoch, self.epochs, self.batches, self.first = epoch, epochs, batches, position
        self.started = self.last = time.perf_counter()
        self.steps_since = 0

    def step(self, position: int, loss: float, images_s: float) -> None:
        """After each optimiser step; `position` is the batches done in the epoch, `loss` their mean loss."""
        self.steps_since += 1
        now = time.perf_counter()
        due = now - self.last >= self.seconds if self.seconds is not None else self.steps_since >= self.steps
        if not self.on or not due or position >= self.batches:
            return
        self.last, self.steps_since = now, 0
        rate = (position - self.first) / max(now - self.started, 1e-9)
        left = (self.batches - position) / rate if rate else float("nan")
        print(
            f"epoch {self.epoch + 1}/{self.epochs}: batch {position}/{self.batches} "
            f"({100 * position / self.batches:.0f}%), mean loss {loss:.4f}, {images_s:.1f} img/s, "
            f"{left:.0f} s left in the epoch",
            file=sys.stderr,
            flush=True,
        )


def parse_every(text: str) -> tuple[float | None, int | None]:
    """(seconds, None) for "30s", (None, steps) for "50".

    Raises:
        PictagError: anything else, or not above 0.
    """
    text = str(text).strip()
    try:
        value = float(text[:-1]) if text.endswith("s") else int(text)
    except ValueError:
        value = 0
    if not 0 < value < float("inf"):
        raise PictagError(f"--log-every {text}: give seconds (30s) or optimiser steps (50), above 0")
    return (value, None) if text.endswith("s") else (None, int(value))
