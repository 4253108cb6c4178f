"""A trained run's classifier as a `Service` (`service: trained`, `model: RUN` in serve.yaml): every image is scored
against the run's own classes by its trained head; requests name no labels.

It is the zero-shot service with one fixed head, so decoding, batching and replies are the same code.
"""

from __future__ import annotations

import torch

from pictag.errors import PictagError
from pictag.heads.base import Head
from pictag.serve.zero_shot import ZeroShotService


class TrainedService(ZeroShotService):
    """Classification into a run directory's classes with its trained head (`pictag train`)."""

    name = "trained"

    def setup(self) -> None:
        """Load the run's encoder and head, once."""
        from pictag.models.run_dir import load_run

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.checkpoint or cfg.random_weights:
            raise PictagError("serve config: service trained takes its weights from the run (model: RUN) alone")
        run = load_run(cfg.model, device=cfg.device, precision=cfg.precision)
        if run.head is None:
            raise PictagError(
                f"serve config: {cfg.model} is a {run.meta.get('task')} run without a classifier head: leave "
                "--service unset and the run picks its service"
            )
        self.encoder, self.trained = run.encoder, run.head
        self.trained.labels = list(run.classes)  # the name the zero-shot service's replies read class names from

    def classes_of(self) -> str:
        return f"the classes of {self.cfg.model}"

    def head(self, params: dict) -> Head:
        """The run's head; a request that names labels is refused, since they would be silently ignored."""
        if params.get("labels") or params.get("templates"):
            raise PictagError(f"this server classifies into {self.classes_of()}; send no labels or templates")
        return self.trained
