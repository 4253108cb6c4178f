"""The `classifier` task: a backbone and a head from the head registry, trained with cross-entropy.

The head starts from the class prototypes (normalised class means of the training images' embeddings), so the
first step already predicts as well as the prototype classifier and the backbone never sees the large, random
gradients of a randomly initialised head.

When the backbone never trains in the run (`--freeze-epochs` >= `--epochs`, see
`pictag.train.engine.backbone_frozen`), it never runs while training either: the training and validation images
are embedded once (their eval crops, in the frozen-feature cache), the head stage fits the head on them, and the
epochs go on training the head on the cached rows, as fusion's `--freeze-encoders` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pictag.heads.base import Head, create_head
from pictag.models.base import Encoder
from pictag.train.data import CachedRows
from pictag.train.engine import backbone_frozen
from pictag.train.task import Task


class ClassifierTask(Task):
    """Backbone + head, cross-entropy with label smoothing; groups "backbone" and "head".

    Args:
        encoder: The backbone.
        head: A trained head over L2-normalised features (linear, mlp, cosine, finetuned).
        class_names: What each of the head's outputs is.
        label_smoothing: Cross-entropy label smoothing.
    """

    name = "classifier"
    group_names = ("backbone", "head")

    def __init__(
        self,
        encoder: Encoder,
        head: Head,
        class_names: list[str],
        label_smoothing: float = 0.0,
        cache: dict[str, tuple[torch.Tensor, torch.Tensor, dict]] | None = None,
    ):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing
        self.cached = cache is not None
        self.unreadable: dict[str, dict] = {}
        for stage, (features, rows, unreadable) in (cache or {}).items():
            # Buffers follow the task to its device, and stay out of checkpoints (they are rebuilt from the cache).
            self.register_buffer(f"features_{stage}", features, persistent=False)
            self.register_buffer(f"rows_{stage}", rows, persistent=False)
            self.unreadable[stage] = unreadable

    @classmethod
    def build(cls, encoder, data, cfg) -> ClassifierTask:
        cache = None
        if backbone_frozen(cfg):
            for p in encoder.parameters():
                p.requires_grad_(False)
            cache = {"train": split_cache(data.train, encoder, cfg)}
            if data.val is not None:
                cache["val"] = split_cache(data.val, encoder, cfg)
        head = create_head(cfg.head, prototypes=prototypes(encoder, data, cfg))
        return cls(encoder, head, data.classes, cfg.label_smoothing, cache)

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"backbone": list(self.encoder.parameters()), "head": list(self.head.parameters())}

    def dataset(self, split, transform, *, train: bool, seed: int, max_pixels: int):
        if self.cached:
            return CachedRows(split, self.unreadable["train" if train else "val"])
        return None

    def features(self, batch: dict, stage: str) -> torch.Tensor:
        """The backbone's unnormalised features of a batch's uint8 crops (what the head stage caches), or read from
        the cache by position when the backbone never trains."""
        if self.cached:
            return getattr(self, f"features_{stage}")[getattr(self, f"rows_{stage}")[batch["index"]]]
        return self.encoder.forward_image(self.encoder.preprocess.normalize(batch["images"]))

    def head_features(self, data, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cached:  # the rows this task already holds, in the order `train_features` gives them
            readable = self.rows_train >= 0
            labels = torch.tensor(data.train.labels, dtype=torch.long)[readable.cpu()]
            return self.features_train[self.rows_train[readable]], labels
        return train_features(self.encoder, data, cfg)

    def head_step(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.head(F.normalize(features.float(), dim=-1))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, {"loss": loss.detach()}

    def head_outputs(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(F.normalize(features.float(), dim=-1)).float(), "labels": labels}

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.head_step(self.features(batch, "train"), batch["labels"])

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.head_outputs(self.features(batch, "val"), batch["labels"])

    def inference_model(self) -> tuple[Encoder, Head]:
        return self.encoder, self.head

    def classes(self) -> list[str]:
        return self.class_names


def split_cache(split, encoder: Encoder, cfg) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features (M, D), row of each position of `split` in them (-1: none), {position: (key, why)} of the
    unreadable images) of a split's eval crops, from the frozen-feature cache."""
    from pictag.train.features import split_features, unreadable

    found = split_features(split, encoder, cfg)
    rows = torch.full((len(split),), -1, dtype=torch.long)
    rows[found["index"]] = torch.arange(len(found["index"]))
    return found["features"], rows, unreadable(split, found)


def train_features(encoder: Encoder, data, cfg, skipped: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(unnormalised features (N, D), labels (N,)) of the readable training images' eval crops, from the
    frozen-feature cache (`pictag.train.features`): the prototypes and the head stage embed each image once."""
    from pictag.train.features import split_features

    found = split_features(data.train, encoder, cfg, skipped)
    return found["features"], torch.tensor(data.train.labels, dtype=torch.long)[found["index"]]


def prototypes(encoder: Encoder, data, cfg, project=None) -> torch.Tensor:
    """(C, D) normalised class means of the training images' normalised eval-crop features (`project`ed first:
    the arcface task's embedding).

    Raises:
        PictagError: a class none of whose images could be decoded.
    """
    from pictag.errors import PictagError

    if data.resuming:
        return torch.zeros(len(data.classes), encoder.embed_dim)

    features, labels = train_features(encoder, data, cfg, data.skipped)
    if project is not None:
        with torch.no_grad():
            features = project(features.to(encoder.device)).cpu()
    features = F.normalize(features.float(), dim=-1)
    counts = torch.bincount(labels, minlength=len(data.classes))
    if (counts == 0).any():
        empty = [data.classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
        raise PictagError(f"no readable training image in class(es) {', '.join(empty)}: add images that decode")
    sums = torch.zeros(len(data.classes), features.shape[1]).index_add_(0, labels, features)
    return F.normalize(sums / counts[:, None], dim=-1)
