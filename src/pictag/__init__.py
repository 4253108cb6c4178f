"""pictag: image classification with CLIP-family and pretrained vision models.

The public API is imported lazily, so `import pictag` (and `pictag --help`) stay instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "PictagError": "pictag.errors",
    "create_model": "pictag.models.registry",
    "list_models": "pictag.models.registry",
    "Encoder": "pictag.models.base",
    "Preprocess": "pictag.models.preprocess",
    "open_source": "pictag.data",
    "build_tar_index": "pictag.data",
    "decode_image": "pictag.data.decode",
    "ZeroShotClassifier": "pictag.heads.zero_shot",
    "load_templates": "pictag.prompts",
    "iter_embeddings": "pictag.pipeline.runner",
    "embed_all": "pictag.pipeline.runner",
    "plan_units": "pictag.pipeline.plan",
    "Job": "pictag.pipeline.job",
    "run_job": "pictag.pipeline.job",
    "load_head": "pictag.heads.base",
    "scores_from_logits": "pictag.heads.base",
    "ClassifyConfig": "pictag.pipeline.options",
    "classify": "pictag.pipeline.classify",
    "EmbeddingStore": "pictag.store.store",
    "embed": "pictag.store.embed",
    "calibrate": "pictag.store.calibrate",
    "search": "pictag.store.search",
    "Head": "pictag.heads.base",
    "create_head": "pictag.heads.base",
    "list_heads": "pictag.heads.base",
    "FewshotConfig": "pictag.fewshot.options",
    "fewshot": "pictag.fewshot.run",
    "FewshotEvalConfig": "pictag.fewshot.options",
    "evaluate_episodes": "pictag.fewshot.evaluate",
    "sample_episodes": "pictag.fewshot.tasks",
    "find_tasks": "pictag.fewshot.tasks",
    "FinetuneConfig": "pictag.train.options",
    "finetune": "pictag.train.finetune",
    "ServeConfig": "pictag.serve.config",
    "EmbedConfig": "pictag.store.options",
    "CalibrateConfig": "pictag.store.options",
    "create_app": "pictag.serve.api",
    "LabelmeCropsConfig": "pictag.data.options",
    "crop_labelme": "pictag.data.labelme",
    "load_run": "pictag.models.run_dir",
    "save_run_model": "pictag.models.run_dir",
    "export_run": "pictag.models.export",
    "download": "pictag.models.download",
    "cached_models": "pictag.models.download",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pictag' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from pictag.data import build_tar_index, open_source
    from pictag.data.decode import decode_image
    from pictag.data.labelme import crop_labelme
    from pictag.data.options import LabelmeCropsConfig
    from pictag.errors import PictagError
    from pictag.fewshot.evaluate import evaluate_episodes
    from pictag.fewshot.options import FewshotConfig, FewshotEvalConfig
    from pictag.fewshot.run import fewshot
    from pictag.fewshot.tasks import find_tasks, sample_episodes
    from pictag.heads.base import Head, create_head, list_heads, load_head, scores_from_logits
    from pictag.heads.zero_shot import ZeroShotClassifier
    from pictag.models.base import Encoder
    from pictag.models.download import cached_models, download
    from pictag.models.export import export_run
    from pictag.models.preprocess import Preprocess
    from pictag.models.registry import create_model, list_models
    from pictag.models.run_dir import load_run, save_run_model
    from pictag.pipeline.classify import classify
    from pictag.pipeline.job import Job, run_job
    from pictag.pipeline.options import ClassifyConfig
    from pictag.pipeline.plan import plan_units
    from pictag.pipeline.runner import embed_all, iter_embeddings
    from pictag.prompts import load_templates
    from pictag.serve.api import create_app
    from pictag.serve.config import ServeConfig
    from pictag.store.calibrate import calibrate
    from pictag.store.embed import embed
    from pictag.store.options import CalibrateConfig, EmbedConfig
    from pictag.store.search import search
    from pictag.store.store import EmbeddingStore
    from pictag.train.finetune import finetune
    from pictag.train.options import FinetuneConfig
