"""timm image-only backbones: `timm:NAME` (pretrained tag allowed after a dot, as timm writes it)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pictag.errors import PictagError, option
from pictag.models.base import Encoder
from pictag.models.checkpoint import file_digest, load_checkpoint
from pictag.models.hub import fetch_failed, hub_online
from pictag.models.preprocess import Preprocess
from pictag.models.registry import Backend, ModelSpec, unknown_name


class TimmEncoder(Encoder):
    """Pooled, pre-classifier features of a timm model, and the model's own classifier (`pretrained_classifier`)
    kept aside, outside the module, so that the encoder's parameters and state dict are the headless model's.
    """

    def __init__(
        self,
        spec: str,
        model: torch.nn.Module,
        weights_id: str,
        classifier: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=model)
        _, height, width = cfg["input_size"]
        crop_pct = cfg.get("crop_pct", 1.0)
        # timm's eval transform: the short side becomes size / crop_pct, then a centre crop.
        resize = (
            math.floor(max(height, width) / crop_pct) if cfg.get("crop_mode", "center") == "center" else (height, width)
        )
        preprocess = Preprocess((height, width), resize, cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))
        super().__init__(spec, model, preprocess, embed_dim=model.num_features, weights_id=weights_id)
        self.pretrained_classifier = classifier

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(pixels)


def _create(spec: ModelSpec, checkpoint=None, random_weights: bool = False) -> Encoder:
    import timm

    arch = spec.name.split(".")[0]
    if not timm.is_model(arch):
        raise unknown_name("timm", spec.name, timm.list_models())
    if checkpoint is not None or random_weights:
        torch.manual_seed(0)
        # Build with the default classifier so a full checkpoint (classifier included) loads as it is.
        model = timm.create_model(spec.name, pretrained=False)
        if checkpoint is not None:
            _load_into(model, checkpoint)
            weights_id = f"file:{file_digest(checkpoint)}"
        else:
            weights_id = "random:0"
    else:
        hub_online()
        try:
            model = timm.create_model(spec.name, pretrained=True)
        except Exception as exc:  # hub and cache errors come in many types
            raise fetch_failed(
                f"timm:{spec.name}", exc, f"Pass local weights: {option('checkpoint', 'FILE')}"
            ) from None
        weights_id = f"tag:{spec.name}"
    classifier = _own_classifier(model)
    model.reset_classifier(0)
    return TimmEncoder(f"timm:{spec.name}", model, weights_id, classifier)


def _own_classifier(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, bias) of the model's linear classifier, detached copies; None for a headless model (a features-only
    checkpoint or tag) or a classifier that is not one linear layer (convolutional or distilled heads)."""
    classifier = model.get_classifier() if getattr(model, "num_classes", 0) else None
    if not isinstance(classifier, torch.nn.Linear) or classifier.bias is None:
        return None
    return classifier.weight.detach().clone(), classifier.bias.detach().clone()


def _load_into(model: torch.nn.Module, checkpoint) -> None:
    try:
        load_checkpoint(model, checkpoint)
    except PictagError:
        # A features-only checkpoint has no classifier tensors: load it into the headless model.
        model.reset_classifier(0)
        load_checkpoint(model, checkpoint)


def _names() -> list[str]:
    import timm

    return timm.list_pretrained()


def _rebuild(spec: ModelSpec, files: Path, meta: dict) -> Encoder:
    return _create(spec, random_weights=True)  # timm rebuilds an architecture from its name alone


BACKEND = Backend("timm", _create, _names, "timm image-only backbones (no zero-shot)", rebuild=_rebuild)
