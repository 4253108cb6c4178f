"""Zero-shot classification as a `Service`: per-request labels and templates over pictag's encoder and
`ZeroShotClassifier`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import torch

from pictag.data.decode import decode_image
from pictag.errors import PictagError
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.prompts import parse_labels, request_templates
from pictag.serve.config import ServeConfig
from pictag.serve.service import Service


@dataclass
class Query:
    """One decoded request: the image's crop, the classifier of its labels, and how many labels it wants back."""

    crop: np.ndarray
    head: ZeroShotClassifier
    top_k: int


@dataclass
class Prediction:
    """The ranked labels of one image."""

    labels: list[str]
    scores: list[float]
    neighbours: list[dict] | None = None  # the nearest gallery images, where there is a gallery


class ZeroShotService(Service[Query, Prediction]):
    """Zero-shot classification with per-request labels and templates.

    Text prototypes are built once per (model, templates, labels) and kept in an in-memory LRU in front of
    `ZeroShotClassifier`'s disk cache, so a new label set costs one text pass and later requests none.

    Args:
        cfg: The serving config (model, default labels and templates, limits).
    """

    name = "zero-shot"

    def __init__(self, cfg: ServeConfig):
        super().__init__(cfg)
        self.encoder = None
        self.default_labels: list[str] | None = None
        self._heads: collections.OrderedDict[tuple, ZeroShotClassifier] = collections.OrderedDict()

    def __str__(self) -> str:
        if self.encoder is None:  # not set up yet: the device is still unknown
            return super().__str__()
        return f"{self.name} service, {self.encoder.spec} on {self.encoder.device}"

    def setup(self) -> None:
        """Load the model and the default label set's prototypes (so the first request pays neither)."""
        from pictag.models.build import build_encoder

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # No int8 here: a worker has no images of its own to calibrate on.
        self.encoder = build_encoder(
            cfg,
            engine=cfg.engine,
            batch_size=cfg.batch_size,
        )
        if not self.encoder.has_text:
            raise PictagError(
                f"serve config: {cfg.model} cannot encode text, so it cannot score labels: serve a run trained on it "
                "(--model RUN serves its classes), a labelled gallery (--gallery STORE), or a CLIP-family model"
            )
        if cfg.labels or cfg.labels_file:
            self.default_labels = parse_labels(cfg.labels, cfg.labels_file)
            self.head({})

    def head(self, params: dict) -> ZeroShotClassifier:
        """The classifier for a request's labels and templates (the defaults where it names none).

        The request's labels and templates are checked again here, with the API's own functions: the queue is a
        way in too (another client of Redis, an API of another version).

        Raises:
            PictagError: no labels anywhere, bad labels or templates, or a model that cannot encode text.
        """
        cfg = self.cfg
        labels = params.get("labels")
        labels = parse_labels(labels, max_labels=cfg.max_labels) if labels else self.default_labels
        if not labels:
            raise PictagError("no labels: send labels with the request, or set labels in serve.yaml")
        templates = params.get("templates")
        templates = request_templates(templates, cfg.max_templates) if templates else cfg.templates
        key = (tuple(labels), templates if isinstance(templates, str) else tuple(templates))
        head = self._heads.get(key)
        if head is None:
            head = ZeroShotClassifier(self.encoder, labels, templates)
            self._heads[key] = head
            while len(self._heads) > self.cfg.label_cache_size:
                self._heads.popitem(last=False)
        self._heads.move_to_end(key)
        return head

    def decode(self, image: bytes, params: dict) -> Query:
        """The request's classifier, then its image as the model's uint8 crop (`DecodeError` for bad images)."""
        head = self.head(params)
        top_k = params.get("top_k") or self.cfg.top_k
        if not isinstance(top_k, int) or top_k < 1:
            raise PictagError(f"top_k must be a whole number of at least 1, got {str(top_k)[:30]!r}")
        preprocess = self.encoder.preprocess
        img = decode_image(image, min_size=preprocess.min_decode_size, max_pixels=self.cfg.max_pixels,
                           max_aspect_ratio=self.cfg.max_aspect_ratio)  # fmt: skip
        return Query(preprocess.crop(img), head, top_k)

    def predict(self, batch: list[Query]) -> list[Prediction]:
        """One forward pass over the batch's crops, then each image against its own classifier."""
        return self.rank(batch, self.features(batch))

    def features(self, batch: list[Query]) -> torch.Tensor:
        """The image embeddings of the batch's crops, from one forward pass."""
        pixels = torch.from_numpy(np.stack([q.crop for q in batch])).to(self.encoder.device)
        return self.encoder.encode_image(self.encoder.preprocess.normalize(pixels))

    def rank(self, batch: list[Query], features: torch.Tensor) -> list[Prediction]:
        """The top-k labels of each image by its own request's classifier."""
        rows_by_head: dict[int, list[int]] = collections.defaultdict(list)
        for row, query in enumerate(batch):
            rows_by_head[id(query.head)].append(row)
        out: list[Prediction | None] = [None] * len(batch)
        for rows in rows_by_head.values():
            head = batch[rows[0]].head
            scores, indices = head.top_k(features[rows], max(batch[r].top_k for r in rows))
            for r, s, i in zip(rows, scores.tolist(), indices.tolist()):
                k = batch[r].top_k
                out[r] = Prediction([head.labels[j] for j in i[:k]], s[:k])
        return out

    def encode(self, prediction: Prediction) -> dict:
        """The JSON body of a successful answer."""
        body = {
            "model": self.encoder.spec,
            "labels": [{"label": lab, "score": round(s, 6)} for lab, s in zip(prediction.labels, prediction.scores)],
        }
        if prediction.neighbours is not None:
            body["neighbours"] = prediction.neighbours
        return body
