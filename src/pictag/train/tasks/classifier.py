"""The `classifier` task: a backbone and a head from the head registry, trained with cross-entropy.

The head starts from the class prototypes (normalised class means of the training images' embeddings), so the
first step already predicts as well as the prototype classifier and the backbone never sees the large, random
gradients of a randomly initialised head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pictag.heads.base import Head, create_head
from pictag.models.base import Encoder
from pictag.train.task import Task, register_task


@register_task("classifier")
class ClassifierTask(Task):
    """Backbone + head, cross-entropy with label smoothing; groups "backbone" and "head".

    Args:
        encoder: The backbone.
        head: A trained head over L2-normalised features (linear, mlp, cosine, finetuned).
        class_names: What each of the head's outputs is.
        label_smoothing: Cross-entropy label smoothing.
    """

    group_names = ("backbone", "head")

    def __init__(self, encoder: Encoder, head: Head, class_names: list[str], label_smoothing: float = 0.0):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing

    @classmethod
    def build(cls, encoder, data, cfg) -> ClassifierTask:
        return cls(
            encoder, create_head(cfg.head, prototypes=prototypes(encoder, data, cfg)), data.classes, cfg.label_smoothing
        )

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"backbone": list(self.encoder.parameters()), "head": list(self.head.parameters())}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.encoder.preprocess.normalize(images)
        return self.head(F.normalize(self.encoder.forward_image(pixels).float(), dim=-1))

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(batch["images"])
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.label_smoothing)
        return loss, {"loss": loss.detach()}

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"logits": self.logits(batch["images"]).float(), "labels": batch["labels"]}

    def inference_model(self) -> tuple[Encoder, Head]:
        return self.encoder, self.head

    def classes(self) -> list[str]:
        return self.class_names


def prototypes(encoder: Encoder, data, cfg) -> torch.Tensor:
    """(C, D) normalised class means of the training images' eval-crop embeddings.

    Raises:
        PictagError: a class none of whose images could be decoded.
    """
    from pictag.errors import PictagError
    from pictag.train.data import embed_split

    if data.resuming:
        return torch.zeros(len(data.classes), encoder.embed_dim)

    features, labels = embed_split(
        data.train,
        encoder,
        workers=cfg.workers or 0,
        batch_size=cfg.batch_size,
        skipped=data.skipped,
        max_pixels=cfg.max_pixels,
    )
    counts = torch.bincount(labels, minlength=len(data.classes))
    if (counts == 0).any():
        empty = [data.classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
        raise PictagError(f"no readable training image in class(es) {', '.join(empty)}: add images that decode")
    sums = torch.zeros(len(data.classes), features.shape[1]).index_add_(0, labels, features)
    return F.normalize(sums / counts[:, None], dim=-1)
