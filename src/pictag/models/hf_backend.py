"""transformers models: `hf:ORG/NAME` from the hub, or `hf:/path` saved with `save_pretrained`.

CLIP-family models (both towers), and text-only encoders (BERT-type, e.g. a sentence-transformers folder such as
all-MiniLM-L6-v2), which embed texts by mean pooling of their last hidden states over the real tokens, as
sentence-transformers does; they serve as the text tower of another model (`pictag train --text-model`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from pictag.errors import PictagError, option
from pictag.models.base import Encoder
from pictag.models.checkpoint import file_digest, load_checkpoint
from pictag.models.hub import fetch_failed, hub_online
from pictag.models.preprocess import Preprocess
from pictag.models.registry import Backend, ModelSpec

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


class HfClipEncoder(Encoder):
    has_text = True

    def __init__(self, spec: str, model, tokenizer, processor, weights_id: str):
        bias = getattr(model, "logit_bias", None)
        super().__init__(
            spec,
            model,
            _preprocess_from(processor),
            embed_dim=model.config.projection_dim
            if hasattr(model.config, "projection_dim")
            else model.config.vision_config.hidden_size,
            weights_id=weights_id,
            logit_scale=model.logit_scale.exp().item(),
            logit_bias=None if bias is None else bias.item(),
        )
        self.tokenizer = tokenizer
        self.processor = processor  # saved with runs and exports, beside the tokenizer
        # SigLIP was trained on fixed-length padded text, CLIP on padding to the longest prompt. Both have a fixed
        # number of positions (CLIP 77, SigLIP 64), and a longer text indexes past them: it is cut there.
        siglip = "siglip" in model.config.model_type
        positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
        context = min(tokenizer.model_max_length, positions or tokenizer.model_max_length)
        self.text_kwargs = dict(padding="max_length" if siglip else True, max_length=context, truncation=True)

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.module.get_image_features(pixel_values=pixels))

    def forward_text(self, texts: Sequence[str]) -> torch.Tensor:
        return _pooled(self.module.get_text_features(**tokenize(self, texts).to(self.device)))


class HfTextEncoder(Encoder):
    """A transformers text encoder without an image tower: mean-pooled last hidden states."""

    has_text = True

    def __init__(self, spec: str, model, tokenizer, weights_id: str):
        # No image preprocessing: this encoder has no image tower (forward_image refuses, naming the fix).
        super().__init__(spec, model, None, embed_dim=model.config.hidden_size, weights_id=weights_id)
        self.tokenizer = tokenizer
        limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512))
        self.text_kwargs = dict(padding=True, truncation=True, max_length=limit)

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise PictagError(
            f"{self.spec} is a text-only encoder: use it as --text-model, with an image --model beside it"
        )

    def forward_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize(self, texts).to(self.device)
        hidden = self.module(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])[0]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def tokenize(encoder: HfClipEncoder | HfTextEncoder, texts: Sequence[str]):
    """Tokens of texts, padded and cut to the encoder's context (`text_kwargs`), the cut logged once."""
    tokens = encoder.tokenizer(list(texts), return_tensors="pt", **encoder.text_kwargs)
    # A fast tokenizer (every transformers 5 one) keeps what truncation cut; a slow one does not say.
    truncated = any(encoding.overflowing for encoding in tokens.encodings or ())
    encoder.log_truncation(truncated, encoder.text_kwargs["max_length"])
    return tokens


def _text_only(config) -> bool:
    """A text encoder with no vision part (BERT, RoBERTa, MPNet, ...), as opposed to CLIP-family models."""
    return not hasattr(config, "vision_config") and not hasattr(config, "text_config")


def _pooled(out) -> torch.Tensor:
    # transformers 5 wraps the projected embedding in a model output; 4.x returned the tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _preprocess_from(processor) -> Preprocess:
    size = processor.size
    size = size if isinstance(size, dict) else vars(size)
    if size.get("shortest_edge"):
        resize = size["shortest_edge"]
    else:
        resize = (size["height"], size["width"])
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size if isinstance(processor.crop_size, dict) else vars(processor.crop_size)
        out = (crop["height"], crop["width"])
    else:
        out = resize if isinstance(resize, tuple) else (resize, resize)
    resample = processor.resample
    interpolation = _RESAMPLE.get(int(getattr(resample, "value", resample)), "bicubic")
    return Preprocess(out, resize, interpolation, tuple(processor.image_mean), tuple(processor.image_std), "tensor")


def _create(spec: ModelSpec, checkpoint=None, random_weights: bool = False) -> Encoder:
    try:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
    except ImportError:
        raise PictagError("hf: models need transformers: pip install 'pictag[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # pictag shows its own progress
    name = spec.name
    local = os.path.isdir(name)
    if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise PictagError(f"hf:{name} is neither a local directory nor a hub id (ORG/NAME)")
    if not local:
        hub_online()
    fix = f"Save the model with save_pretrained and pass hf:/that/dir, or {option('checkpoint', 'FILE')} with hf:{name}"
    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
        processor = None if _text_only(config) else AutoImageProcessor.from_pretrained(name)
        if random_weights or checkpoint is not None:
            torch.manual_seed(0)
            model = AutoModel.from_config(config)
        else:
            model = AutoModel.from_pretrained(name)
    except PictagError:
        raise
    except Exception as exc:  # hub, cache and file errors come in many types
        raise fetch_failed(f"hf:{name}", exc, fix) from None
    text_only = processor is None
    if not text_only and not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise PictagError(f"hf:{name} is a {config.model_type} model, not CLIP-family; use timm:NAME for image-only")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        weights_id = f"file:{file_digest(checkpoint)}"
    elif random_weights:
        weights_id = "random:0"
    else:
        weights_id = _local_weights_id(name) if local else f"hf:{name}@{getattr(config, '_commit_hash', None)}"
    if text_only:
        return HfTextEncoder(f"hf:{name}", model, tokenizer, weights_id)
    return HfClipEncoder(f"hf:{name}", model, tokenizer, processor, weights_id)


def _local_weights_id(folder: str) -> str:
    # The folder's path says nothing about which weights it holds now; their content does.
    files = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".bin")))
    return "dir:" + "+".join(file_digest(os.path.join(folder, f)) for f in files)


def _names() -> list[str]:
    # The hub is not listed offline; these are the CLIP-family ids users reach for most.
    return [
        "openai/clip-vit-base-patch32",
        "openai/clip-vit-base-patch16",
        "openai/clip-vit-large-patch14",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "google/siglip-base-patch16-224",
        "google/siglip-so400m-patch14-384",
    ]


def _rebuild(spec: ModelSpec, files: Path, meta: dict) -> Encoder:
    # A transformers architecture is the config, tokenizer and processor files the run keeps beside its weights.
    if not (files / "config.json").is_file():
        raise PictagError(f"run {files.parent} has no {files.name}/config.json to rebuild {spec}")
    return _create(ModelSpec("hf", str(files)), random_weights=True)


BACKEND = Backend(
    "hf",
    _create,
    _names,
    "transformers CLIP/SigLIP (or a text encoder) by hub id or local directory",
    rebuild=_rebuild,
)
