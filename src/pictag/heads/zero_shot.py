"""Zero-shot classification: labels become text prototypes through prompt templates, images are scored by cosine."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import torch

from pictag.config import cache_dir
from pictag.heads.base import scores_from_logits
from pictag.models.base import Encoder
from pictag.prompts import load_templates


class ZeroShotClassifier:
    """Scores image embeddings against text prototypes built from labels × templates.

    Prototypes follow CLIP: each prompt embedding is normalised, averaged per label and normalised again. They are
    computed once, in batches, and cached on disk keyed by (weights, preprocessing-independent text setup).

    Args:
        encoder: A CLIP-family encoder.
        labels: Class names.
        templates: Template set name, file, or list; see `load_templates`.
        use_cache: Read and write the on-disk prototype cache.
    """

    def __init__(
        self,
        encoder: Encoder,
        labels: Sequence[str],
        templates: str | Sequence[str] = "simple",
        use_cache: bool = True,
    ):
        self.encoder = encoder
        self.labels = list(labels)
        self.templates = load_templates(templates)
        self.prototypes = self._cached_prototypes() if use_cache else self._compute_prototypes()

    @property
    def cache_key(self) -> str:
        payload = json.dumps([self.encoder.spec, self.encoder.weights_id, self.templates, self.labels])
        return hashlib.sha1(payload.encode()).hexdigest()

    def _cached_prototypes(self) -> torch.Tensor:
        path = cache_dir() / "prototypes" / f"{self.cache_key}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True).to(self.encoder.device)
            except Exception:  # a torn or foreign file is only a cache miss
                pass
        prototypes = self._compute_prototypes()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(prototypes.cpu(), tmp)
        os.replace(tmp, path)
        return prototypes

    def _compute_prototypes(self) -> torch.Tensor:
        prompts = [template.format(label) for label in self.labels for template in self.templates]
        embeddings = self.encoder.encode_text(prompts)
        per_label = embeddings.view(len(self.labels), len(self.templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(per_label, dim=-1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities (N, labels) of normalised image embeddings."""
        return self.encoder.logit_scale * features.to(self.prototypes.device) @ self.prototypes.T

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities (softmax, or sigmoid for SigLIP-style weights)."""
        return scores_from_logits(self.logits(features), bias=self.encoder.logit_bias)

    def top_k(self, features: torch.Tensor, k: int = 1, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, label indices) of the k best labels per image, best first.

        Equal to `scores(features).topk(k)`, but only the k kept scores are formed and the softmax denominator is
        summed in place in the logits, so no other (N, labels) matrix is allocated: at a million images this pass is
        bound by allocation and memory traffic. `temperature` divides the logits (calibration).
        """
        logits = self.logits(features)
        if temperature != 1.0:
            logits.div_(temperature)
        values, indices = logits.topk(min(k, len(self.labels)), dim=-1)
        if self.encoder.logit_bias is not None:  # sigmoid scores are per label: the kept logits are enough
            return scores_from_logits(values, bias=self.encoder.logit_bias), indices
        best = values[:, :1]
        denominators = logits.sub_(best).exp_().sum(dim=-1, keepdim=True)
        return (values - best).exp() / denominators, indices
