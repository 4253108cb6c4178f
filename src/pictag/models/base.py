"""What every backbone looks like to the rest of pictag, whichever library built it."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.models.preprocess import Preprocess


class Encoder:
    """A pretrained image (and maybe text) encoder with the preprocessing and tokenizer of its weights.

    Subclasses implement `_image_features` and, for CLIP-family models, `_text_features`; this class owns device,
    precision, batching and normalisation so that backends cannot differ there.

    Attributes:
        spec: The canonical model spec, e.g. "open_clip:ViT-B-32/openai".
        preprocess: The pixels the weights were trained on.
        embed_dim: Length of the embeddings.
        logit_scale: Multiplier from cosine similarity to logits (CLIP's learned temperature); 1.0 if image-only.
        logit_bias: SigLIP's bias; its presence means scores are sigmoids rather than a softmax.
        weights_id: Identifies the weights (tag or checkpoint content), for cache keys.
    """

    has_text: bool = False

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
        self.spec = spec
        self.module = module.eval()
        self.preprocess = preprocess
        self.embed_dim = embed_dim
        self.weights_id = weights_id
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, dim={self.embed_dim}, device={self.device}, dtype={self.dtype})"

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> Encoder:
        """Move to a device; a half dtype runs the forward passes under autocast, keeping the weights in fp32."""
        self.device = torch.device(device)
        self.dtype = dtype
        self.module.to(self.device)
        return self

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 embeddings of a preprocessed (N, 3, H, W) batch."""
        with self._autocast():
            features = self._image_features(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 embeddings of texts, computed in batches."""
        if not self.has_text:
            raise PictagError(
                f"{self.spec} is an image-only model and cannot encode text: zero-shot labels need a CLIP-family "
                "model (open_clip:ARCH/TAG or hf:ORG/NAME)"
            )
        # Batches of texts of similar length: tokenizers that pad to the longest text in a batch then pad little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        for start in range(0, len(texts), batch_size):
            with self._autocast():
                chunks.append(self._text_features([texts[i] for i in order[start : start + batch_size]]).float())
        embedded = torch.cat(chunks)
        features = torch.empty_like(embedded)
        features[order] = embedded
        return F.normalize(features, dim=-1)

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError
