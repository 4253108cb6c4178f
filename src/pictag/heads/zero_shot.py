"""Zero-shot classification: labels become text prototypes through prompt templates, images are scored by cosine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from pictag.config import cache_dir
from pictag.heads.base import ZERO_SHOT, Head
from pictag.models.base import Encoder
from pictag.prompts import load_templates
from pictag.storage.files import atomic_path


class ZeroShotClassifier(Head):
    """Scores image embeddings against text prototypes built from labels × templates: logits = scale · f·Pᵀ.

    Prototypes follow CLIP: each prompt embedding is normalised, averaged per label and normalised again. They are
    computed once, in batches, and cached on disk keyed by (weights, preprocessing-independent text setup). The
    head keeps the encoder's logit scale and bias (SigLIP's bias makes the scores sigmoids), not the encoder.

    Args:
        encoder: A CLIP-family encoder.
        labels: Class names.
        templates: Template set name, file, or list; see `load_templates`.
        use_cache: Read and write the on-disk prototype cache.
    """

    name = "zero-shot"
    kind = ZERO_SHOT

    def __init__(
        self,
        encoder: Encoder,
        labels: Sequence[str],
        templates: str | Sequence[str] = "simple",
        use_cache: bool = True,
    ):
        super().__init__(len(labels), encoder.embed_dim)
        self.labels = list(labels)
        self.templates = load_templates(templates)
        self.logit_scale, self.logit_bias = float(encoder.logit_scale), encoder.logit_bias
        prototypes = self._cached_prototypes(encoder) if use_cache else self._compute_prototypes(encoder)
        self.register_buffer("prototypes", prototypes)

    def _cached_prototypes(self, encoder: Encoder) -> torch.Tensor:
        # The text tower's precision and engine are part of the key: prototypes computed in bf16 must not be read
        # back by an exact fp32 run.
        text_setup = getattr(encoder, "text_setup", None) or str(getattr(encoder, "autocast_dtype", None))
        key = json.dumps([encoder.spec, encoder.weights_id, self.templates, self.labels, text_setup])
        path = cache_dir() / "prototypes" / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True).to(encoder.device)
            except Exception:  # a torn or foreign file is only a cache miss
                pass
        prototypes = self._compute_prototypes(encoder)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(prototypes.cpu(), tmp)
        return prototypes

    def _compute_prototypes(self, encoder: Encoder) -> torch.Tensor:
        prompts = [template.format(label) for label in self.labels for template in self.templates]
        embeddings = encoder.encode_text(prompts)
        per_label = embeddings.view(len(self.labels), len(self.templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(per_label, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Features read from an embedding store arrive on the CPU while the prototypes sit on the encoder's device.
        return self.logit_scale * features.to(self.prototypes.device) @ self.prototypes.T

    def config(self) -> dict:
        return {"name": self.name, "labels": self.labels, "templates": self.templates}
