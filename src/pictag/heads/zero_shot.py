"""Zero-shot classification: labels become text prototypes through prompt templates, images are scored by cosine."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch

from pictag.config import cache_dir
from pictag.errors import PictagError
from pictag.models.base import Encoder

UNKNOWN = "unknown"


def load_templates(name_or_path: str | Sequence[str] = "simple") -> list[str]:
    """Prompt templates by name ("simple", "imagenet80"), from a file (one per line), or as a list.

    Every template must hold one "{}" where the label goes.
    """
    if isinstance(name_or_path, str):
        builtin = resources.files("pictag") / "templates" / f"{name_or_path}.txt"
        if builtin.is_file():
            text = builtin.read_text()
        elif os.path.isfile(name_or_path):
            text = Path(name_or_path).read_text()
        else:
            raise PictagError(f"templates {name_or_path!r}: not a file, nor one of simple, imagenet80")
        templates = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    else:
        templates = list(name_or_path)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise PictagError(f"templates {name_or_path!r}: each needs exactly one {{}} for the label (bad: {bad[:2]})")
    return templates


def parse_labels(labels: str | Sequence[str] | None = None, labels_file: str | os.PathLike | None = None) -> list[str]:
    """Labels from a comma-separated string, a list, or a file with one label per line (# starts a comment)."""
    if labels_file is not None:
        if not os.path.isfile(labels_file):
            raise PictagError(f"labels file {labels_file} does not exist")
        items = [line.split("#", 1)[0] for line in Path(labels_file).read_text().splitlines()]
    elif isinstance(labels, str):
        items = labels.split(",")
    else:
        items = list(labels or [])
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise PictagError("the label list is empty: pass --labels a,b,c or --labels-file FILE")
    duplicates = sorted({x for x in items if items.count(x) > 1})
    if duplicates:
        raise PictagError(f"labels appear more than once: {', '.join(duplicates[:5])}")
    if UNKNOWN in items:
        raise PictagError(f"{UNKNOWN!r} is reserved for images below --threshold; rename that label")
    return items


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
        return self.encoder.scores(self.logits(features))

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
        if self.encoder.logit_bias is not None:
            return torch.sigmoid(values + self.encoder.logit_bias), indices
        best = values[:, :1]
        denominators = logits.sub_(best).exp_().sum(dim=-1, keepdim=True)
        return (values - best).exp() / denominators, indices
