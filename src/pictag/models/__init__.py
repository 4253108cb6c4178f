from pictag.models.base import Encoder
from pictag.models.preprocess import Preprocess
from pictag.models.registry import DEFAULT_MODEL, create_model, default_model, list_models, parse_spec

__all__ = ["DEFAULT_MODEL", "Encoder", "Preprocess", "create_model", "default_model", "list_models", "parse_spec"]
