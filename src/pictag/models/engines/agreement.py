"""How far a compiled encoder's results are from the exact torch fp32 ones, on images the job hands in.

int8 is calibrated on the first images of the user's own source and judged on the images after them (held out):
top-1 agreement and mean |Δscore| over the job's labels when it has labels, else over nearest neighbours among the
held-out images (what an embedding store is searched for).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pictag.models.base import Encoder

HELD_OUT = 200


@dataclass
class Agreement:
    """Agreement of a candidate's results with the reference's (exact torch fp32) on the same images.

    Attributes:
        images: Images compared.
        top1: Share of images whose top-1 label (or nearest neighbour) is the same.
        mean_abs_delta: Mean |Δscore| over every image and label (or mean |Δcosine| to the other images).
        min_cosine: Lowest cosine similarity between an image's two embeddings.
        over: What top-1 ranges over, e.g. "10 labels" or "nearest neighbours".
        held_out: False when the images were also the calibration images (too few images to hold any out).
    """

    images: int
    top1: float
    mean_abs_delta: float
    min_cosine: float
    over: str
    held_out: bool = True

    def summary(self) -> str:
        which = "held-out images" if self.held_out else "images (also the calibration ones: too few to hold out)"
        delta = "score" if "labels" in self.over else "cosine"
        return (
            f"top-1 agreement with fp32 {100 * self.top1:.1f}% over {self.over} on {self.images} {which}, "
            f"mean |Δ{delta}| {self.mean_abs_delta:.4f}, min cosine {self.min_cosine:.5f}"
        )


def measure_agreement(reference: torch.Tensor, candidate: torch.Tensor, head=None, **kwargs) -> Agreement:
    """Agreement of two (N, D) normalised embeddings of the same images.

    Args:
        reference: The exact embeddings.
        candidate: The embeddings to judge.
        head: A head scoring embeddings (e.g. `ZeroShotClassifier`), or None: nearest neighbours.
        kwargs: `Agreement` fields to set (e.g. held_out=False).
    """
    reference, candidate = reference.float().cpu(), candidate.float().cpu()
    cosine = F.cosine_similarity(reference, candidate, dim=-1)
    if head is not None:
        ref, got = head.scores(reference).cpu(), head.scores(candidate).cpu()
        over = f"{ref.shape[1]} labels"
    else:
        ref, got = reference @ reference.T, candidate @ candidate.T
        # An image's nearest neighbour is another image: its own similarity is left out.
        ref.fill_diagonal_(-2.0), got.fill_diagonal_(-2.0)
        over = "nearest neighbours"
    top1 = (ref.argmax(dim=1) == got.argmax(dim=1)).float().mean().item() if len(ref) > 1 or head is not None else 1.0
    mask = ref > -2.0
    delta = (ref - got).abs()[mask].mean().item() if mask.any() else 0.0
    return Agreement(len(reference), top1, delta, cosine.min().item() if len(cosine) else 1.0, over, **kwargs)


@dataclass
class Calibration:
    """Images of a source for int8: identified by their bytes, decoded only when a quantization is built.

    Attributes:
        records: (key, encoded bytes) of the images.
        digest: Identifies the images' content and the preprocessing, for cache keys.
    """

    records: list[tuple[str, bytes]]
    encoder: Encoder

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.encoder.preprocess.fingerprint.encode())
        for key, data in self.records:
            h.update(f"{key}\0{len(data)}\0".encode() + hashlib.sha256(data).digest())
        return h.hexdigest()[:20]

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self) -> torch.Tensor:
        """The images, preprocessed: (N, 3, H, W) float32 (those that fail to decode left out)."""
        from pictag.data.decode import DecodeError, decode_image

        preprocess, crops = self.encoder.preprocess, []
        for _, data in self.records:
            try:
                crops.append(torch.from_numpy(preprocess.crop(decode_image(data, preprocess.min_decode_size))))
            except DecodeError:
                continue
        if not crops:
            return torch.empty(0, 3, *preprocess.size)
        return preprocess.normalize(torch.stack(crops))
