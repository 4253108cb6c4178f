"""open_clip models: `open_clip:ARCH/TAG` (pretrained tag), `open_clip:ARCH` with a checkpoint, or random weights."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from pictag.errors import PictagError, option
from pictag.models.base import Encoder
from pictag.models.checkpoint import file_digest, load_checkpoint
from pictag.models.hub import fetch_failed, hub_online
from pictag.models.preprocess import Preprocess
from pictag.models.registry import Backend, ModelSpec, unknown_name
from pictag.storage.files import write_file


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
        self.trims_context = _trims_context(model)
        self._pad_id = int(tokenizer([""])[0, -1])  # an empty text is all padding after its start and end tokens

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(pixels)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of texts: open_clip's tokenizers cut a text to the context, whose end it then fills."""
        tokens = self.tokenizer(list(texts))
        self.log_truncation(bool((tokens[:, -1] != self._pad_id).any()), tokens.shape[1])
        return tokens

    def forward_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(texts).to(self.device)
        return _encode_trimmed(self.module, tokens) if self.trims_context else self.module.encode_text(tokens)


def _trims_context(model) -> bool:
    # A causal text tower pooled at the end-of-text token never looks past that token, so the padding after it can
    # be cut: label prompts fill 10-20 of CLIP's 77 positions. Other towers (SigLIP's last-token pooling, CoCa's
    # class token, custom text models) keep open_clip's own path.
    from open_clip.model import CLIP

    return (
        type(model).encode_text is CLIP.encode_text
        and model.attn_mask is not None
        and model.text_pool_type in ("argmax", "eos")
    )


def _encode_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `CLIP.encode_text`, on the positions up to the last pooled end-of-text token of the batch."""
    return encode_tokens(model, trim_tokens(model, tokens))


def trim_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens cut after the last pooled end-of-text token of the batch (only for towers `_trims_context` accepts)."""
    eos_id = getattr(model, "text_eos_id", None)
    pooled_at = tokens.argmax(dim=-1) if model.text_pool_type == "argmax" else (tokens == eos_id).int().argmax(dim=-1)
    return tokens[:, : int(pooled_at.max()) + 1]


def encode_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `CLIP.encode_text` on trimmed tokens; the length is read from their shape, so an exported graph
    (`pictag.models.engines`) keeps it dynamic."""
    from open_clip.transformer import text_global_pool

    eos_id = getattr(model, "text_eos_id", None)
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, model.text_pool_type, eos_token_id=eos_id)
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


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
            f"open_clip:{spec.name} names no weights: use {example}, pass {option('checkpoint', 'FILE')}, "
            f"or {option('random_weights', True)} for tests"
        )
    # open_clip logs on the root logger (random init, failed downloads); pictag reports those itself, once.
    root = logging.getLogger()
    # setLevel, not `root.level =`: loggers cache whether a level is enabled, and only setLevel clears that cache.
    level = root.level
    root.setLevel(logging.CRITICAL)
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
                    str(spec),
                    exc,
                    f"Pass local weights: {option('model', f'open_clip:{spec.name}')} {option('checkpoint', 'FILE')}",
                ) from None
            weights_id = f"tag:{spec.tag}"
        try:
            tokenizer = open_clip.get_tokenizer(spec.name)
        except Exception as exc:
            raise fetch_failed(str(spec), exc, "Its tokenizer must be in the local Hugging Face cache.") from None
    finally:
        root.setLevel(level)
    return OpenClipEncoder(str(spec), model, tokenizer, weights_id)


def _names() -> list[str]:
    import open_clip

    tagged = [f"{arch}/{tag}" for arch, tag in open_clip.list_pretrained()]
    untagged = [arch for arch in open_clip.list_models() if not open_clip.list_pretrained_tags_by_model(arch)]
    return tagged + untagged


def _rebuild(spec: ModelSpec, files: Path, meta: dict) -> Encoder:
    import open_clip

    from pictag.config import cache_dir

    arch = (meta.get("architecture") or {}).get("open_clip")
    if arch and spec.name not in open_clip.list_models():
        # Register the stored config under its name through open_clip's own mechanism (a JSON file it scans).
        path = cache_dir() / "open_clip_configs" / f"{spec.name}.json"
        write_file(path, json.dumps(arch["config"]).encode())  # whole, for a worker loading the same run meanwhile
        open_clip.add_model_config(path)
    # The tag only named where the starting weights came from; they are replaced by the run's.
    return _create(ModelSpec("open_clip", spec.name), random_weights=True)


BACKEND = Backend(
    "open_clip", _create, _names, "open_clip architectures with pretrained tags", has_tags=True, rebuild=_rebuild
)
