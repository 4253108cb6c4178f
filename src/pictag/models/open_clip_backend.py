"""open_clip models: `open_clip:ARCH/TAG` (pretrained tag), `open_clip:ARCH` with a checkpoint, or random weights."""

from __future__ import annotations

import logging

import torch

from pictag.errors import PictagError
from pictag.models.base import Encoder
from pictag.models.checkpoint import file_digest, load_checkpoint
from pictag.models.hub import fetch_failed, hub_online
from pictag.models.preprocess import Preprocess
from pictag.models.registry import Backend, ModelSpec, register_backend, unknown_name


class OpenClipEncoder(Encoder):
    has_text = True

    def __init__(self, spec: str, model: torch.nn.Module, tokenizer, weights_id: str):
        cfg = model.visual.preprocess_cfg
        size = tuple(cfg["size"]) if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
        if cfg.get("resize_mode", "shortest") == "squash":
            resize = size
        elif cfg.get("resize_mode", "shortest") == "shortest":
            resize = max(size)
        else:
            raise PictagError(f"{spec}: open_clip resize_mode {cfg['resize_mode']!r} is not supported")
        preprocess = Preprocess(
            size, resize, cfg.get("interpolation", "bicubic"), tuple(cfg["mean"]), tuple(cfg["std"])
        )
        bias = getattr(model, "logit_bias", None)
        super().__init__(
            spec,
            model,
            preprocess,
            embed_dim=_probe_dim(model, size),
            weights_id=weights_id,
            logit_scale=model.logit_scale.exp().item(),
            logit_bias=None if bias is None else bias.item(),
        )
        self.tokenizer = tokenizer

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.module.encode_text(self.tokenizer(texts).to(self.device))


def _probe_dim(model, size) -> int:
    with torch.inference_mode():
        return model.encode_image(torch.zeros(1, 3, *size)).shape[-1]


def _create(spec: ModelSpec, checkpoint=None, random_weights: bool = False) -> Encoder:
    import open_clip

    if spec.name not in open_clip.list_models():
        raise unknown_name("open_clip", spec.name, open_clip.list_models())
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if spec.tag and spec.tag not in tags and not checkpoint:
        raise PictagError(
            f"open_clip:{spec.name} has no weights tagged {spec.tag!r}; known tags: {', '.join(tags) or 'none'}"
        )
    if checkpoint is None and spec.tag is None and not random_weights:
        example = f"open_clip:{spec.name}/{tags[0]}" if tags else f"open_clip:{spec.name}"
        raise PictagError(
            f"open_clip:{spec.name} names no weights: use {example}, pass --checkpoint FILE, "
            "or --random-weights for tests"
        )
    # open_clip logs on the root logger (random init, failed downloads); pictag reports those itself, once.
    root = logging.getLogger()
    level, root.level = root.level, logging.CRITICAL
    try:
        if checkpoint is not None:
            model = open_clip.create_model(spec.name, pretrained=None)
            load_checkpoint(model, checkpoint)
            weights_id = f"file:{file_digest(checkpoint)}"
        elif random_weights:
            torch.manual_seed(0)
            model = open_clip.create_model(spec.name, pretrained=None)
            weights_id = "random:0"
        else:
            hub_online()
            try:
                model = open_clip.create_model(spec.name, pretrained=spec.tag)
            except Exception as exc:  # network, cache and hub errors come in many types
                raise fetch_failed(
                    str(spec), exc, f"Pass local weights: --model open_clip:{spec.name} --checkpoint FILE"
                ) from None
            weights_id = f"tag:{spec.tag}"
        try:
            tokenizer = open_clip.get_tokenizer(spec.name)
        except Exception as exc:
            raise fetch_failed(str(spec), exc, "Its tokenizer must be in the local Hugging Face cache.") from None
    finally:
        root.level = level
    return OpenClipEncoder(str(spec), model, tokenizer, weights_id)


def _names() -> list[str]:
    import open_clip

    tagged = [f"{arch}/{tag}" for arch, tag in open_clip.list_pretrained()]
    untagged = [arch for arch in open_clip.list_models() if not open_clip.list_pretrained_tags_by_model(arch)]
    return tagged + untagged


register_backend(Backend("open_clip", _create, _names, "open_clip architectures with pretrained tags", has_tags=True))
