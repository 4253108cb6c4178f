"""Model registry and encoders. Importing this package is light: torch loads when a model is built."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pictag.models.build import build_encoder
from pictag.models.registry import DEFAULT_MODEL, create_model, default_model, list_models, parse_spec

_LAZY = {"Encoder": "pictag.models.base", "Preprocess": "pictag.models.preprocess"}

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "Preprocess",
    "build_encoder",
    "create_model",
    "default_model",
    "list_models",
    "parse_spec",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pictag.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


if TYPE_CHECKING:
    from pictag.models.base import Encoder
    from pictag.models.preprocess import Preprocess
