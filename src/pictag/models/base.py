"""What every backbone looks like to the rest of pictag, whichever library built it."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from pictag.errors import PictagError, option
from pictag.models.preprocess import Preprocess

log = logging.getLogger(__name__)


class Encoder(torch.nn.Module):
    """A pretrained image (and maybe text) encoder with the preprocessing and tokenizer of its weights.

    An `nn.Module`: `train()`, `eval()`, `parameters()`, `state_dict()` and `to(device)` are PyTorch's own, and its
    parameters are those of the library's model, `module`. Subclasses implement the grad-enabled `forward_image`
    and, for CLIP-family models, `forward_text`; this class builds the inference wrappers `encode_image` and
    `encode_text` on them and owns precision, batching and normalisation, so that backends cannot differ there.

    Inference precision is `autocast_dtype`, not the weights' dtype: the weights stay fp32 and `encode_*` run under
    autocast, which keeps fp32 accuracy where it matters (norms, softmax) and lets training update fp32 weights.

    `encode_*` run under `torch.no_grad()`, not `torch.inference_mode()`: under inference_mode autocast does not
    cache its bf16/fp16 copies of the weights (torch skips the cache there), and an uncached copy does not require
    grad, so matmul no longer folds a non-contiguous 3-D input (open_clip's attention transposes to sequence-first)
    into one matrix product but expands the weight over every position for a batched one. In bf16 on a CPU that
    copy cost ViT-B/32 more than the bf16 speed-up (measured in benchmarks/cpu_autocast_modes.py).

    Attributes:
        spec: The canonical model spec, e.g. "open_clip:ViT-B-32/openai".
        module: The library's model (open_clip, transformers or timm); checkpoints hold its state dict.
        preprocess: The pixels the weights were trained on.
        embed_dim: Length of the embeddings.
        logit_scale: Multiplier from cosine similarity to logits (CLIP's learned temperature); 1.0 if image-only.
        logit_bias: SigLIP's bias; its presence means scores are sigmoids rather than a softmax.
        weights_id: Identifies the weights (tag or checkpoint content), for cache keys.
        autocast_dtype: The dtype `encode_*` compute in; float32 runs without autocast.
        pretrained_classifier: (weight (C, D), bias (C,)) of the classifier the weights were trained with, applied
            to the unnormalised features (the `pretrained` head), or None when the model has none.
    """

    has_text: bool = False
    pretrained_classifier: tuple[torch.Tensor, torch.Tensor] | None = None

    def __init__(
        self,
        spec: str,
        module: torch.nn.Module,
        preprocess: Preprocess,
        embed_dim: int,
        weights_id: str,
        logit_scale: float = 1.0,
        logit_bias: float | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.module = module
        self.preprocess = preprocess
        self.embed_dim = embed_dim
        self.weights_id = weights_id
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self.autocast_dtype = torch.float32
        self._truncation_logged = False
        self.eval()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.spec!r}, dim={self.embed_dim}, device={self.device}, "
            f"autocast_dtype={self.autocast_dtype})"
        )

    @property
    def device(self) -> torch.device:
        """Where the weights are; inputs are moved here."""
        return next(self.parameters()).device

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised features of a preprocessed (N, 3, H, W) batch on `device`, with gradients when enabled."""
        raise NotImplementedError

    def forward_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised features of texts, tokenised on `device`, with gradients when enabled.

        Raises:
            PictagError: the model has no text tower.
        """
        raise PictagError(
            f"{self.spec} is an image-only model and cannot encode text: zero-shot labels need a CLIP-family "
            "model (open_clip:ARCH/TAG or hf:ORG/NAME); a timm model classifies into its own classes with "
            f"{option('head', 'pretrained')}"
        )

    def log_truncation(self, truncated: bool, context: int) -> None:
        """Say, once per encoder, that texts were cut to the text tower's `context` tokens.

        Every text tower truncates to its own context (CLIP's 77 positions, a BERT's 512), as CLIP's own tokenizer
        does: a long label or product title is encoded from its first tokens instead of failing the batch.
        """
        if truncated and not self._truncation_logged:
            self._truncation_logged = True
            log.warning(
                "%s reads at most %d tokens of a text: longer texts are cut there (said once)", self.spec, context
            )

    def autocast(self):
        """The autocast context `encode_*` run in: `autocast_dtype` on `device`, or nothing for float32."""
        if self.autocast_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """L2-normalised float32 embeddings of a preprocessed (N, 3, H, W) batch (unnormalised with `normalize`
        False: what a model's own classifier takes)."""
        with self.autocast():
            features = self.forward_image(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1) if normalize else features.float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 embeddings of texts, computed in batches.

        Raises:
            PictagError: the model has no text tower.
        """
        # Batches of texts of similar length: tokenizers that pad to the longest text in a batch then pad little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        for start in range(0, len(texts), batch_size):
            with self.autocast():
                chunks.append(self.forward_text([texts[i] for i in order[start : start + batch_size]]).float())
        embedded = torch.cat(chunks)
        features = torch.empty_like(embedded)
        features[order] = embedded
        return F.normalize(features, dim=-1)


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a module's weights: towers with the same digest embed alike (one embedding pass serves them)."""
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in module.state_dict().values() if p.is_floating_point()])
        squares = torch.stack(
            [p.detach().double().square().sum() for p in module.state_dict().values() if p.is_floating_point()]
        )
    return hashlib.sha1(sums.cpu().numpy().tobytes() + squares.cpu().numpy().tobytes()).hexdigest()[:16]
