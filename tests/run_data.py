"""Tiny run directories that any process can load (a timm test backbone, rebuilt from its name): a classifier whose
linear head starts from its classes' mean embeddings, and an arcface run, for the serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from pictag.data import open_source
from pictag.heads.base import create_head
from pictag.models import create_model
from pictag.models.run_dir import save_run_model
from pictag.pipeline.runner import embed_all

BACKBONE = "timm:test_efficientnet_gn"


def classifier_run(run: Path, labelled: Path) -> Path:
    """A classifier run over the class folders of `labelled`, which classifies their images."""
    encoder = create_model(BACKBONE, random_weights=True, device="cpu", precision="fp32")
    embedded = embed_all(open_source(str(labelled), labelled=True), encoder, batch_size=16, workers=0)
    classes = sorted(set(embedded.labels))
    labels = torch.tensor([classes.index(label) for label in embedded.labels])
    prototypes = torch.stack([embedded.features[labels == c].mean(0) for c in range(len(classes))])
    head = create_head("linear", prototypes=prototypes, scale=100.0)
    save_run_model(run / "best", encoder, head, task="classifier", classes=classes, metrics={})
    return run


def arcface_run(run: Path) -> Path:
    """An arcface run: an embedding without a head of its own, which labels images through a gallery."""
    encoder = create_model(BACKBONE, random_weights=True, device="cpu", precision="fp32")
    save_run_model(run / "best", encoder, None, task="arcface", classes=None, metrics={})
    return run
