"""The towers of an encoder as exportable graphs: tensors in, unnormalised features out, batch axis dynamic.

The image tower of every encoder is its `forward_image`, whatever the backend. A text tower starts after the
tokenizer, which stays in Python: each CLIP-family backend says here how its texts become token arrays and which
module maps them to features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pictag.models.base import Encoder


@dataclass
class Tower:
    """One exportable tower.

    Attributes:
        name: "image", or "text" (with the token length when the graph has a fixed one, e.g. "text32").
        module: forward(*inputs) -> (N, D) features, in eval mode.
        example: Example inputs, by input name, in `module.forward`'s order.
        dynamic: Dynamic axes of each input: always the batch, and the token length where the graph allows it.
    """

    name: str
    module: torch.nn.Module
    example: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, str]]


@dataclass
class TextTower:
    """A text tower: the tokenizer, in Python, then one graph, or one per token length.

    Attributes:
        prepare: Texts to the tower's input arrays.
        variant: Which graph runs given inputs: a token length, or None for the one graph of dynamic length.
        build: The `Tower` of a variant.
    """

    prepare: Callable[[Sequence[str]], dict[str, np.ndarray]]
    variant: Callable[[dict[str, np.ndarray]], int | None]
    build: Callable[[int | None], Tower]


class _ImageForward(torch.nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_image(pixels)


def image_tower(encoder: Encoder) -> Tower:
    """The image tower: (N, 3, H, W) float32 "pixels" to features."""
    height, width = encoder.preprocess.size
    example = {"pixels": torch.randn(2, 3, height, width)}
    return Tower("image", _ImageForward(encoder).eval(), example, {"pixels": {0: "batch"}})


def text_tower(encoder: Encoder) -> TextTower | None:
    """The text tower of a CLIP-family encoder, or None (image-only models, or a backend not known here)."""
    if not encoder.has_text:
        return None
    for make in _TEXT_TOWERS:
        tower = make(encoder)
        if tower is not None:
            return tower
    return None


class _OpenClipText(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, trims: bool):
        super().__init__()
        self.model, self.trims = model, trims

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        from pictag.models.open_clip_backend import encode_tokens

        return encode_tokens(self.model, tokens) if self.trims else self.model.encode_text(tokens)


# Token lengths of open_clip's text graphs, below the full context. The trace of nn.MultiheadAttention fixes the
# sequence length in its reshapes, so a graph cannot take any length: trimmed tokens are padded up to the next of
# these (padding after the end-of-text token changes nothing in a causal tower), and label prompts fit in 32.
_LENGTHS = (32,)


def _open_clip_text(encoder: Encoder) -> TextTower | None:
    from pictag.models.open_clip_backend import OpenClipEncoder, trim_tokens

    if not isinstance(encoder, OpenClipEncoder):
        return None
    model, trims = encoder.module, encoder.trims_context
    context = encoder.tokenizer(["x"]).shape[1]
    lengths = [n for n in _LENGTHS if n < context] + [context] if trims else [context]

    def prepare(texts: Sequence[str]) -> dict[str, np.ndarray]:
        tokens = encoder.tokenize(texts)
        if trims:
            needed = trim_tokens(model, tokens).shape[1]
            tokens = tokens[:, : next(n for n in lengths if n >= needed)]
        return {"tokens": tokens.numpy().astype(np.int64)}

    def build(length: int | None) -> Tower:
        example = encoder.tokenizer(["a photo of a cat", "a dog"])[:, :length]
        return Tower(f"text{length}", _OpenClipText(model, trims).eval(), {"tokens": example}, {"tokens": {0: "batch"}})

    return TextTower(prepare, lambda inputs: inputs["tokens"].shape[1], build)


class _HfText(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from pictag.models.hf_backend import _pooled

        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _hf_text(encoder: Encoder) -> TextTower | None:
    from pictag.models.hf_backend import HfClipEncoder, tokenize

    if not isinstance(encoder, HfClipEncoder):
        return None

    def tokens(texts: Sequence[str]) -> dict[str, torch.Tensor]:
        out = tokenize(encoder, texts)
        ids = out["input_ids"]
        # SigLIP's tokenizer gives no mask: it was trained on padded text, so every position is attended to.
        return {"input_ids": ids, "attention_mask": out.get("attention_mask", torch.ones_like(ids))}

    def prepare(texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: t.numpy().astype(np.int64) for name, t in tokens(texts).items()}

    def build(length: int | None) -> Tower:
        # transformers' attention reshapes with -1, so one graph takes any token length.
        example = tokens(["a photo of a cat", "a dog"])
        dynamic = {name: {0: "batch", 1: "length"} for name in example}
        return Tower("text", _HfText(encoder.module).eval(), example, dynamic)

    return TextTower(prepare, lambda inputs: None, build)


_TEXT_TOWERS = [_open_clip_text, _hf_text]
