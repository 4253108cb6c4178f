"""Two towers from two specs: `pair:IMAGE_SPEC+TEXT_SPEC`, e.g. `pair:timm:tf_efficientnet_lite0+hf:/minilm`.

An image model (timm, open_clip, hf CLIP) and a text model (a CLIP-family model's text tower, or a text encoder
such as a sentence-transformers folder) as one `Encoder`, so that a fusion run trains, saves and loads both like
any single backbone. `--checkpoint` applies to the image tower. `pictag train --task fusion --text-model SPEC` builds
one; a run directory rebuilds it from the spec and the text tower's files kept in `best/backbone/text/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pictag.errors import PictagError
from pictag.models.base import Encoder
from pictag.models.registry import Backend, ModelSpec, get_backend, parse_spec

SCHEME = "pair"


def pair_spec(image: str, text: str) -> str:
    """The spec of the pair of an image spec and a text spec."""
    return f"{SCHEME}:{image}+{text}"


def split_pair(name: str) -> tuple[str, str]:
    """(image spec, text spec) of a pair spec's name.

    Raises:
        PictagError: not IMAGE+TEXT.
    """
    image, sep, text = name.partition("+")
    if not sep or not image or not text or "+" in text:
        raise PictagError(f"{SCHEME}:{name} must be {SCHEME}:IMAGE_SPEC+TEXT_SPEC, e.g. pair:timm:NAME+hf:/text/dir")
    return image, text


class PairEncoder(Encoder):
    """An image tower and a text tower built from two specs; `text_dim` is the text embedding's length.

    `module` holds both encoders ("image", "text"); the image tower's preprocessing is the pair's.
    """

    has_text = True

    def __init__(self, image: Encoder, text: Encoder):
        if not text.has_text:
            raise PictagError(f"{text.spec} has no text tower: --text-model needs a text encoder or a CLIP model")
        super().__init__(
            pair_spec(image.spec, text.spec),
            torch.nn.ModuleDict({"image": image, "text": text}),
            image.preprocess,
            image.embed_dim,
            weights_id=f"{image.weights_id}+{text.weights_id}",
        )
        self.text_dim = text.embed_dim

    @property
    def image(self) -> Encoder:
        return self.module["image"]

    @property
    def text(self) -> Encoder:
        return self.module["text"]

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image.forward_image(pixels)

    def forward_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text.forward_text(texts)

    def save_backbone_files(self, folder: Path) -> None:
        """Keep what rebuilds each transformers tower (config, tokenizer) under `folder/<image|text>/`."""
        for part in ("image", "text"):
            tower = self.module[part]
            if parse_spec(getattr(tower, "backbone_spec", tower.spec)).scheme != "hf":
                continue
            (folder / part).mkdir(parents=True)
            tower.module.config.save_pretrained(folder / part)
            tower.tokenizer.save_pretrained(folder / part)
            processor = getattr(tower, "processor", None)
            if processor is not None:
                processor.save_pretrained(folder / part)


def _tower(spec: str, **options) -> Encoder:
    parsed = parse_spec(spec)
    if parsed.scheme in (SCHEME, "run"):
        raise PictagError(f"a {SCHEME}: tower must be a backbone spec (timm:, open_clip:, hf:), not {spec}")
    return get_backend(parsed.scheme).create(parsed, **options)


def _create(spec: ModelSpec, checkpoint=None, random_weights: bool = False) -> Encoder:
    image, text = split_pair(spec.name)
    return PairEncoder(
        _tower(image, checkpoint=checkpoint, random_weights=random_weights), _tower(text, random_weights=random_weights)
    )


def _rebuild(spec: ModelSpec, files: Path, meta: dict) -> Encoder:
    # Each tower is rebuilt by its own backend, from the files the run keeps for it under files/image, files/text.
    towers = []
    for part, tower_spec in zip(("image", "text"), split_pair(spec.name), strict=True):
        parsed = parse_spec(tower_spec)
        rebuild = get_backend(parsed.scheme).rebuild
        if rebuild is None:
            raise PictagError(f"a {SCHEME}: tower {tower_spec} cannot be rebuilt (scheme {parsed.scheme})")
        towers.append(rebuild(parsed, files / part, meta))
    return PairEncoder(*towers)


BACKEND = Backend(SCHEME, _create, list, "an image model and a text model as one: pair:IMAGE+TEXT", rebuild=_rebuild)
