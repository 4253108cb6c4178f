"""The `arcface` task: an embedding trained with an additive-margin loss over P×K batches, for retrieval.

    pictag train data/ --task arcface --splits splits.csv --model timm:tf_efficientnetv2_l --embed-dim 512 \
        --freeze-epochs 1 --out runs/arc

The backbone's pooled features go through Linear to --embed-dim and an optional BatchNorm (`EmbeddingEncoder`),
are L2-normalised, and are scored against normalised class centres (`ArcFaceHead`); ArcFace's margin on the target
class (`MarginLoss`, in fp32 outside autocast) pulls each class together and the others apart. During
--freeze-epochs the backbone is frozen and the margin is 0, so the new embedding and centres settle before the
margin's large gradients reach pretrained weights; the engine only changes `requires_grad`, never the groups.

Validation measures what the embedding is for: leave-one-out Recall@1 and @5 of the validation images among
themselves, so validation may hold classes never trained on (whole objects held out). `RUN/best/` stores the
embedding encoder and the centre head: `create_model(RUN)` embeds with the trained, normalised embedding (embed,
search, index-embeddings, the store and `classify --gallery` take it), and `classify --model RUN` scores the run's
own classes by their centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pictag.heads.arcface import ArcFaceHead
from pictag.heads.base import create_head
from pictag.models.base import Encoder
from pictag.models.embedding import EmbeddingEncoder
from pictag.train.losses import MarginLoss
from pictag.train.task import Task
from pictag.train.tasks.classifier import prototypes, train_features

RECALL_AT = (1, 5)


class ArcFaceTask(Task):
    """Backbone + embedding + class centres under a margin loss; groups "backbone" and "head" (embedding, centres).

    Args:
        encoder: The embedding encoder (backbone and neck).
        head: The class centres.
        loss: The margin loss; its margin is 0 in frozen epochs.
        class_names: The training classes, in the head's order.
        classes_per_batch: P of the P×K batches (from `batch_size` when None, see `PKSampler`).
        samples_per_class: K.
        batch_size: Images per P×K batch when P is not given.
    """

    name = "arcface"
    group_names = ("backbone", "head")
    # Crops that keep most of the image: an object's identity must survive the crop (timm's default goes down to 8%
    # of the area, which is for classes that show anywhere in the picture).
    augment = {"scale": (0.5, 1.0), "color_jitter": 0.2}
    defaults = {"early_stop": "val_recall@1"}
    metrics = (*(f"val_recall@{k}" for k in RECALL_AT), "val_map@r")
    open_set_val = True
    unfreeze_mark = "backbone unfrozen, margin on"

    def __init__(
        self,
        encoder: EmbeddingEncoder,
        head: ArcFaceHead,
        loss: MarginLoss,
        class_names: list[str],
        classes_per_batch: int | None = None,
        samples_per_class: int = 4,
        batch_size: int = 32,
    ):
        super().__init__()
        self.encoder, self.head, self.loss = encoder, head, loss
        self.class_names = list(class_names)
        self.margin = loss.margin
        self.classes_per_batch, self.samples_per_class = classes_per_batch, samples_per_class
        self.batch_size = batch_size

    @classmethod
    def build(cls, encoder, data, cfg) -> ArcFaceTask:
        embedder = EmbeddingEncoder(encoder, cfg.embed_dim, cfg.embed_norm == "batchnorm").to(encoder.device)
        # The centres start at the class means of the new (random) embedding of the cached backbone features.
        centres = prototypes(encoder, data, cfg, project=embedder.neck.eval())
        if data.resuming:
            centres = torch.zeros(len(data.classes), cfg.embed_dim)
        head = create_head("arcface", prototypes=centres, scale=cfg.arcface_s, subcenters=cfg.subcenters)
        loss = MarginLoss(cfg.margin_loss, cfg.arcface_s, cfg.arcface_m)
        return cls(
            embedder,
            head.to(encoder.device),
            loss,
            data.classes,
            cfg.classes_per_batch,
            cfg.samples_per_class,
            cfg.batch_size,
        )

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        head = [*self.encoder.neck.parameters(), *self.head.parameters()]
        return {"backbone": list(self.encoder.module.parameters()), "head": head}

    def train_sampler(self, labels: list[int], seed: int, rank: int, world: int):
        from pictag.train.sampler import PKSampler

        return PKSampler(
            labels,
            self.classes_per_batch,
            self.samples_per_class,
            seed,
            rank=rank,
            world=world,
            names=self.class_names,
            batch_size=self.batch_size,
        )

    def set_epoch(self, epoch: int, frozen: bool) -> None:
        self.loss.margin = 0.0 if frozen else self.margin

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of uint8 crops, before the embedding: what the head stage caches."""
        return self.encoder.backbone.forward_image(self.encoder.preprocess.normalize(images))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.neck(features).float(), dim=-1)

    def head_features(self, data, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        return train_features(self.encoder.backbone, data, cfg)

    def head_step(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        embeddings = self.embed(features)
        with torch.autocast(embeddings.device.type, enabled=False):
            loss = self.loss(self.head.cosines(embeddings.float()), labels)
        return loss, {"loss": loss.detach(), "margin": self.loss.margin}

    def head_outputs(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embed(features), "labels": labels}

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.head_step(self.features(batch["images"]), batch["labels"])

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.head_outputs(self.features(batch["images"]), batch["labels"])

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> tuple[dict, None]:
        """Leave-one-out Recall@1 and @5 (those below the number of images) and MAP@R of the validation set."""
        from pictag.eval.retrieval import retrieval_metrics

        embeddings, labels = outputs["embeddings"].float().numpy(), outputs["labels"].numpy()
        ks = [k for k in RECALL_AT if k < len(labels)]
        if not ks:
            return {}, None
        found = retrieval_metrics(embeddings, labels, embeddings, labels, ks, leave_one_out=True)
        metrics = {f"val_recall@{k}": value for k, value in found.recall.items()}
        return {**metrics, "val_map@r": found.map_at_r}, None

    def inference_model(self) -> tuple[Encoder, ArcFaceHead]:
        return self.encoder, self.head

    def classes(self) -> list[str]:
        return self.class_names
