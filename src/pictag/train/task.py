"""What the training engine trains: a task is the model and its loss together, in a registry (`--task`).

Like open_clip's `TrainingTask`, a `Task` is an `nn.Module` holding everything that has parameters (the encoder,
a head, a loss's own weights) and computing the loss itself, so the engine knows nothing about a task's model:

    task = create_task("classifier", encoder, data, cfg)   # built once, before any optimiser exists
    loss, logs = task(batch)                                 # training step (through forward: DDP needs that)
    out = task(batch, stage="val")                           # {"logits": (N, C), "labels": (N,)} for metrics
    encoder, head = task.inference_model()                   # what RUN/best/ stores

A batch is a dict made by the engine's data loader and moved to the device:

    {"images": (N, H, W, 3) uint8 crops (augmented for training, the eval crop for validation),
     "labels": (N,) int64 class indices into `data.classes`,
     "texts":  list of N str | None (a table's text column), "index": (N,) int64 positions in the split}

Tasks normalise `images` themselves (`encoder.preprocess.normalize`), so uint8 crops cross from the workers.
Parameter groups are named (`"backbone"`, `"head"`, `"image"`, `"text"`, ...): `--lr NAME=VALUE` sets each, and
every group exists from the first step (phases change `requires_grad`, never the optimiser's groups).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pictag.errors import PictagError
from pictag.registry import Registry

if TYPE_CHECKING:
    from pictag.heads.base import Head
    from pictag.models.base import Encoder


class Task(torch.nn.Module):
    """A model and its loss, trained by `pictag.train.engine.Engine`.

    Subclasses set `name` (listed in `TASKS`), build themselves in `build` and implement the steps.

    Attributes:
        name: The registry name (`--task`).
        group_names: The names `param_groups` will return, known before the task is built, so that `--lr` and
            `--weight-decay` are checked before any work (empty: checked once the task is built).
        head_groups: Parameter groups trained during `--freeze-epochs` (the others wait).
        augment: Options of the encoder's `preprocess.train_transform` (timm's defaults when empty).
        freeze_norm_stats: The backbone's batch-norm layers keep their pretrained running statistics while their
            weights train (a head's own norms, such as arcface's neck, always learn theirs). Statistics updated in
            train mode from small batches of augmented crops were the unfreeze shock: on hymenoptera with
            EfficientNet-Lite0, they alone (learning rate 0) took validation loss from 0.165 to 0.236 in one epoch
            (see docs/training.md).
        encoder: The backbone; `--unfreeze-blocks` and layer-wise decay look for its image blocks.
        defaults: This task's values of options left unset (None), e.g. {"patience": 2} or the validation metric
            that picks best/ ({"early_stop": "val_recall@1"}); see `pictag.train.run.resolve_defaults`.
        open_set_val: Validation may hold classes the training images lack (retrieval is measured, not classes).
        cross_validates: `--folds K` (or a table's fold column) trains every fold into RUN/fold<i>/ and writes the
            out-of-fold predictions and the CV score (`pictag.train.kfold`); otherwise it trains one fold.
        metrics: What `validation_metrics` reports that `--early-stop` can watch, so that a metric the task does
            not report is refused before any work rather than after the first epoch.
        unfreeze_mark: What curves.png names the end of --freeze-epochs with.
        cached: The frozen part never runs while training: the epochs read its features from the frozen-feature
            cache (`dataset` gives positions only), after the head stage; set by a task built so.
    """

    name: ClassVar[str]
    group_names: ClassVar[tuple[str, ...]] = ()
    head_groups: ClassVar[tuple[str, ...]] = ("head",)
    metrics: ClassVar[tuple[str, ...]] = ("val_loss", "val_top1", "val_top3", "val_top5")
    augment: ClassVar[dict] = {}
    freeze_norm_stats: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}
    open_set_val: ClassVar[bool] = False
    cross_validates: ClassVar[bool] = False
    unfreeze_mark: ClassVar[str] = "backbone unfrozen"
    cached: bool = False
    encoder: Encoder

    @classmethod
    def load_data(cls, cfg: Any) -> Any:
        """The training and validation data of `cfg` (`pictag.train.data.TrainData`): a labelled source by default.

        Raises:
            PictagError: data this task cannot train on.
        """
        from pictag.train.data import load_train_data

        return load_train_data(cfg, cls.open_set_val)

    @classmethod
    def create_encoder(cls, cfg: Any) -> Encoder:
        """The backbone `cfg` names, on the CPU, computing in `cfg.precision`."""
        from pictag.models.registry import create_model

        return create_model(
            cfg.model,
            checkpoint=cfg.checkpoint,
            random_weights=cfg.random_weights,
            device="cpu",
            precision=cfg.precision,
        )

    @classmethod
    def fold_names(cls, cfg: Any) -> list[str] | None:
        """The folds of a cross-validated run (`cross_validates`), or None when `cfg` asks for no folds."""
        return [str(i) for i in range(cfg.folds)] if cfg.folds else None

    def dataset(self, split: Any, transform: Any, *, train: bool, seed: int, max_pixels: int) -> Any:
        """The engine's items of `split` (see `pictag.train.data.split_images`), or None to read the source's images."""
        return None

    def after_best(self, out: Path, predictions: dict) -> None:
        """A new best epoch was saved (rank 0): its validation `predictions` ("logits", "labels", "index")."""

    @classmethod
    def build(cls, encoder: Encoder, data: Any, cfg: Any) -> Task:
        """A new task for `encoder` and the training data (`pictag.train.data.TrainData`), before any step.

        Heads start from what the data says (class prototypes); `cfg` is the `TrainConfig` (head kind, ...).

        Raises:
            PictagError: the data or options do not suit this task.
        """
        raise NotImplementedError

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Every parameter the task may train, by group name; each parameter in exactly one group."""
        raise NotImplementedError

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logs) of one training batch; logs are scalars for the progress bar and TensorBoard."""
        raise NotImplementedError

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-image outputs of one validation batch: {"logits": (N, C), "labels": (N,)} for classifiers."""
        raise NotImplementedError

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> tuple[dict, dict | None]:
        """(metrics, predictions or None) of the whole validation set: `validation_step`'s outputs concatenated, each
        image once, with the images' "index" in the split. This default scores a classifier's logits (val_loss,
        val_top1, val_top3, val_top5), and each other head's "logits_NAME" (val_NAME_top1, val_NAME_top3: the
        fusion task's --ablate heads); the predictions are what best/'s confusion matrix and `after_best` get."""
        import torch.nn.functional as F

        from pictag.eval.metrics import top_k_accuracy

        logits, labels = outputs["logits"].float(), outputs["labels"]
        metrics = {
            "val_loss": F.cross_entropy(logits, labels).item() if len(labels) else None,
            **{f"val_top{k}": top_k_accuracy(logits, labels, k) for k in (1, 3, 5)},
        }
        for key, other in outputs.items():
            if key.startswith("logits_"):
                name = key.removeprefix("logits_")
                for k in (1, 3):
                    metrics[f"val_{name}_top{k}"] = top_k_accuracy(other.float(), labels, k)
        predictions = {"predicted": logits.argmax(dim=-1), "labels": labels, "logits": logits}
        if "index" in outputs:
            predictions["index"] = outputs["index"]
        return metrics, predictions

    def head_features(self, data: Any, cfg: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features (N, F), labels (N,)) of the training images from the frozen-feature cache
        (`pictag.train.features`): what `head_step` takes and the head stage trains on; None when the task has no
        head stage (its head is not trained on frozen features first)."""
        return None

    def head_step(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """(loss, logs) of the head on a batch of the frozen part's features (`head_features`' kind of rows)."""
        raise NotImplementedError

    def head_outputs(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """`validation_step`'s outputs computed from the frozen part's features, for `validation_metrics`."""
        raise NotImplementedError

    def train_sampler(self, labels: list[int], seed: int, rank: int, world: int):
        """The order of the training images (a `pictag.train.data.EpochSampler` alike), or None for the engine's
        shuffled one; a sampler with a `batch_size` attribute fixes the training batch size (P×K batches)."""
        return None

    def set_epoch(self, epoch: int, frozen: bool) -> None:
        """Called at the start of every epoch, after the engine set `requires_grad` for it; `frozen` is True in the
        --freeze-epochs (the arcface task's margin is 0 then)."""

    def inference_model(self) -> tuple[Encoder, Head | None]:
        """(encoder, head or None) as `RUN/best/` stores them; a clip task has no head (it stays zero-shot)."""
        raise NotImplementedError

    def classes(self) -> list[str] | None:
        """The class names the head predicts, in order, or None."""
        return None

    def after_fit(self, out: Path) -> None:
        """Outputs beyond best/ once training is over (rank 0 only), e.g. the clip task's WiSE-FT model."""

    def forward(self, batch: dict, stage: str = "train") -> Any:
        # The engine calls the task as a module, so DDP's forward hooks see every step (a direct call of
        # training_step would bypass them and leave gradients unsynchronised).
        if stage == "train":
            return self.training_step(batch)
        if stage == "val":
            return self.validation_step(batch)
        raise ValueError(f"unknown stage {stage!r}")


# Every task, by `--task` name, resolved on first use. A task module that fails to import is an error naming it, not a
# task that is silently missing. A plug-in adds its own with `TASKS.register(name, "module:Class")`.
TASKS: Registry[type[Task]] = Registry(
    "training task",
    {
        "arcface": "pictag.train.tasks.arcface:ArcFaceTask",
        "classifier": "pictag.train.tasks.classifier:ClassifierTask",
        "clip": "pictag.train.tasks.clip:ClipTask",
        "fewshot": "pictag.train.tasks.fewshot:FewshotTask",
        "fusion": "pictag.train.tasks.fusion:FusionTask",
    },
)


def list_tasks() -> list[str]:
    """Names of the registered tasks (nothing is imported)."""
    return sorted(TASKS.names())


def get_task(name: str) -> type[Task]:
    """The task class registered under `name`, its module imported.

    Raises:
        PictagError: unknown name (the message lists the known ones), or a task module that fails to import.
    """
    if name not in TASKS:
        raise PictagError(TASKS.unknown(name, list_tasks(), "task"))
    return TASKS.get(name)


def create_task(name: str, encoder: Encoder, data: Any, cfg: Any) -> Task:
    """A new task by registry name; see `Task.build`.

    Raises:
        PictagError: unknown name (the message lists the known ones), a task module that fails to import, or data
            the task cannot use.
    """
    return get_task(name).build(encoder, data, cfg)
