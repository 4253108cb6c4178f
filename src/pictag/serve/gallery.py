"""A labelled gallery as a `Service` (`service: gallery`, `gallery: STORE`): each image's label is a kNN vote of its
nearest gallery images, and the answer lists those images (key, label, similarity and a thumbnail), as
`pictag classify --gallery` and `pictag search` see them.

It is the trained service with a kNN head, so decoding, batching and replies are the same code.
"""

from __future__ import annotations

import base64
import functools
import io
import logging

import torch

from pictag.data._io import Blob
from pictag.errors import PictagError
from pictag.heads.knn import KnnHead
from pictag.serve.trained import TrainedService
from pictag.serve.zero_shot import Prediction, Query

log = logging.getLogger(__name__)
THUMBNAIL_PX = 128
THUMBNAILS_CACHED = 4096


class GalleryService(TrainedService):
    """Classification by a vote of the nearest images of a labelled embedding store, which the answer shows."""

    name = "gallery"

    def setup(self) -> None:
        """Load the model that made the gallery and the gallery's vectors, once."""
        from pictag.store.search import locations
        from pictag.store.store import EmbeddingStore

        cfg = self.cfg
        if not cfg.gallery:
            raise PictagError("serve config: service gallery needs --gallery STORE (`pictag embed DIR --labelled`)")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        store = EmbeddingStore(cfg.gallery)
        self.encoder = store.encoder(cfg.model, cfg.checkpoint, device=cfg.device, precision=cfg.precision,
                                     images=True, random_weights=cfg.random_weights)  # fmt: skip
        features, labels = store.gallery(self.encoder)
        self.trained, classes = KnnHead.from_labels(features, labels, cfg.knn_k, cfg.knn_weights)
        self.trained.labels = classes
        self.keys, self.key_labels = store.keys().tolist(), store.labels().tolist()
        try:
            where = locations(store.manifest, self.keys)
        except PictagError as exc:  # answers still vote; the page shows no pictures
            log.warning("gallery %s: no thumbnails (%s)", cfg.gallery, exc)
            where = {}
        self.thumbnail = functools.lru_cache(THUMBNAILS_CACHED)(functools.partial(_thumbnail, where))

    def classes_of(self) -> str:
        return f"the classes of the gallery {self.cfg.gallery}"

    def predict(self, batch: list[Query]) -> list[Prediction]:
        """The vote of each image's neighbours, and the neighbours themselves (as many as its top_k)."""
        features = self.features(batch)
        predictions = self.rank(batch, features)
        sims, rows = self.trained.neighbours(features)
        for prediction, query, row_sims, row_ids in zip(predictions, batch, sims.tolist(), rows.tolist()):
            prediction.neighbours = [
                {
                    "key": self.keys[i],
                    "label": self.key_labels[i],
                    "similarity": round(sim, 6),
                    "thumbnail": self.thumbnail(self.keys[i]),
                }  # fmt: skip
                for sim, i in list(zip(row_sims, row_ids))[: query.top_k]
            ]
        return predictions


def _thumbnail(where: dict[str, str], key: str) -> str | None:
    """A small JPEG of a gallery image as a data: URL, or None where its file cannot be read here."""
    from PIL import Image

    location = where.get(key)
    if location is None:
        return None
    try:
        with Blob(location) as blob:
            image = Image.open(io.BytesIO(blob.read()))
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=80)
    except (OSError, ValueError, PictagError) as exc:
        log.warning("gallery image %s: %s", location, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
