"""The configs of `pictag train` and `pictag fewshot-train`.

`TrainConfig` holds the options every task takes; each task's own options are one dataclass (`TASK_OPTIONS`), and
`train_config(task)` is the config of `pictag train --task TASK`, the two composed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from pictag.config import Checked, group_values
from pictag.data.options import ProductOptions
from pictag.errors import PictagError
from pictag.models.options import ModelOptions
from pictag.pipeline.options import RuntimeOptions


@dataclass(kw_only=True)
class TrainConfig(RuntimeOptions, ModelOptions):
    """training

    Everything `pictag train` takes, whatever the task. Each task adds its own options: `train_config(task)` is the
    class of a task's config (`TASK_OPTIONS` lists them), and `pictag train --task NAME --help` shows them.

    Attributes:
        data: Training images: a folder of <class>/*.jpg (in place or in a tar), or a table of path,label[,text];
            with --task fusion, a product table (id, label, text fields) and --images.
        out: The run folder: last.ckpt (resume), best/ (the model: --model RUN), metrics.csv, curves.png,
            confusion.png, per_class.csv, tb/ (TensorBoard) and config.yaml.
        task: What is trained: classifier (backbone + head, cross-entropy), clip (contrastive, stays zero-shot),
            arcface (an embedding for retrieval and kNN galleries, with P×K batches), or another registered task.
        val: Validation images with the training classes (folder or table); picks best/ and drives early stopping.
        val_split: Hold out this fraction of each training class for validation (stratified, seeded).
        folds: Stratified K-fold cross-validation: the number of folds (with --fold). Tasks that cross-validate
            (fusion) train every fold into OUT/fold<i>/ (or only --fold i) and write OUT/oof.csv and OUT/cv.json.
        fold: Which fold validates: 0..K-1 with --folds, or a value of the table's fold column.
        label_column: Column of labels in a table.
        text_columns: Column of texts in a table (text, where there is one, when unset); the fusion task joins
            several, comma-separated.
        epochs: Training epochs (including --freeze-epochs).
        batch_size: Images per step on each device (times --accumulate for one optimiser step).
        lr: Learning rate: one number for every group, or per group, e.g. backbone=1e-5,head=3e-4 (a group not
            named: 1e-4; the head after the head stage: the backbone's rate, or a tenth of the swept one with
            frozen towers; otherwise 1e-3).
        weight_decay: AdamW weight decay: one number, or per group like --lr (0.05 when unset; never on norms
            and biases).
        layer_decay: Layer-wise learning-rate decay: each image block back from the last gets this factor more.
        schedule: After warmup: cosine or linear decay to 0 per step, cosine-restarts (cosine to 0 over --t0
            epochs, then again over --t-mult times as many, ...), or plateau (x0.1 when the early-stopping metric
            stops improving for --patience epochs, or 2 epochs).
        warmup_epochs: Epochs of linear warmup.
        precision: Training precision: bf16 on Ampere and newer GPUs, fp16 (with a gradient scaler) on older
            ones, fp32 on CPU, when unset ($PICTAG_PRECISION when set); the first line says what trains.
        accumulate: Batches per optimiser step (1 when unset); a batch too large for the memory free is also split
            into micro-batches that accumulate, so the optimiser still sees the batch asked for.
        clip_grad: Clip the gradients' global norm to this.
        label_smoothing: Cross-entropy label smoothing (0.1 when unset; 0.0 for --task fusion).
        early_stop: Validation metric watched by early stopping and best/: val_top1, val_top3, val_top5, val_loss,
            or val_recall@1 (leave-one-out Recall@1 of the validation embeddings). The task's own when unset:
            val_top1, val_recall@1 for arcface.
        patience: Stop after this many epochs without improvement of --early-stop (never when unset; 2 for --task
            fusion).
        ema: Keep an exponential moving average of the weights with this decay (e.g. 0.999); it is validated
            and saved.
        freeze_epochs: Train the head alone for this many epochs, through the images, then the backbone too
            (arcface: the warm-up, with margin 0); unset, the head is first fitted on cached frozen features (the
            head stage, LP-FT) and everything trains from the first epoch. When it covers every --epochs without
            --init-from (a linear probe), a classifier never runs the backbone while training: each training and
            validation image is embedded once (its eval crop, cached, in inference's precision), the head stage
            runs, and the epochs train the head on the cache at the rate it chose, in seconds.
        unfreeze_blocks: Train only the last N blocks of the image tower (all of it when unset).
        init_from: Start from another run's best weights (stage 2 after stage 1).
        balance: Sample classes evenly.
        seed: Seed of initialisation, splits, data order and augmentation.
        save_every: Also save last.ckpt every N optimiser steps (always at the end of each epoch).
        fresh: Start over, ignoring last.ckpt (a rerun otherwise continues from it).
        splits: A splits CSV from `pictag splits` (path,class,id,split) of the DATA folder: train on its train rows,
            validate on its val rows (with --task arcface, validation classes may be new ones).
        t0: Epochs of the first cycle of --schedule cosine-restarts.
        t_mult: Each cycle of --schedule cosine-restarts is this many times longer than the one before.
        image_size: Train, and store with the run, at this square input size instead of the weights' own (a CNN
            takes any size; 128 trains several times faster than 224 on a CPU).
        warmup_ratio: Linear warmup over this fraction of all optimiser steps (instead of --warmup-epochs).
        logger: Where the numbers also go, comma-separated: tensorboard (RUN/tb), csv (RUN/csv, every step), mlflow
            ($MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db), wandb ($WANDB_PROJECT; WANDB_MODE=offline for no
            server), or none. RUN/metrics.csv and curves.png are always written.
        log_every: How often a log that is not a terminal gets a progress line within an epoch: seconds (30s) or
            optimiser steps (50).
    """

    _out: ClassVar[str] = "folder"
    _positional: ClassVar[tuple[str, ...]] = ("data",)
    _required: ClassVar[tuple[str, ...]] = ("data", "out")
    _unused_defaults: ClassVar[dict[str, Any]] = {}  # set below
    # Every task took the table's columns under the products' spellings too (--label-col beside --label-column).
    _renamed: ClassVar[dict[str, str]] = {
        "text_column": "text_columns",
        "text_cols": "text_columns",
        "label_col": "label_column",
    }
    _at_least: ClassVar[dict[str, int]] = {
        "epochs": 1,
        "freeze_epochs": 0,
        "patience": 1,
        "save_every": 1,
        "image_size": 8,
        "t_mult": 1,
        "accumulate": 1,
        "folds": 2,
        "unfreeze_blocks": 0,
    }
    _within: ClassVar[dict[str, str]] = {
        "val_split": "(0, 1)",
        "layer_decay": "(0, 1]",
        "warmup_epochs": "[0, inf)",
        "warmup_ratio": "[0, 1]",
        "clip_grad": "(0, inf)",
        "label_smoothing": "[0, 1)",
        "ema": "[0, 1)",  # 0: no average
        "t0": "(0, inf)",
        "seed": "[0, 4294967295]",  # numpy's seeds are 32-bit
    }

    data: str | None = None
    out: str | None = None
    task: str = "classifier"
    val: str | None = None
    val_split: float | None = None
    folds: int | None = None
    fold: str | None = None
    label_column: str = "label"
    text_columns: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: str | None = None
    weight_decay: str | None = None
    layer_decay: float | None = None
    schedule: Literal["cosine", "linear", "plateau", "cosine-restarts"] = "cosine"
    warmup_epochs: float = 1.0
    accumulate: int | None = None
    clip_grad: float | None = None
    label_smoothing: float | None = None
    early_stop: Literal["val_top1", "val_top3", "val_top5", "val_loss", "val_recall@1"] | None = None
    patience: int | None = None
    ema: float | None = None
    freeze_epochs: int = 0
    unfreeze_blocks: int | None = None
    init_from: str | None = None
    balance: bool = False
    seed: int = 0
    save_every: int | None = None
    fresh: bool = False
    warmup_ratio: float | None = None
    logger: str = "tensorboard"
    log_every: str = "30s"
    splits: str | None = None
    image_size: int | None = None
    t0: float = 1.0
    t_mult: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        config = train_config(self.task)
        if not isinstance(self, config):  # a task reads its own options, which another task's config lacks
            raise PictagError(f"the {self.task} task's options are a {config.__name__}, not a {type(self).__name__}")
        group_values(self.lr, "--lr", "(0, inf)")  # a negative rate is gradient ascent
        group_values(self.weight_decay, "--weight-decay", "[0, inf)")
        from pictag.train.loggers import parse_every, parse_loggers

        parse_loggers(self.logger)
        parse_every(self.log_every)


@dataclass(kw_only=True)
class ClassifierOptions:
    """classifier task

    Attributes:
        head: The classifier's head, by its registered name (as in every command), initialised from the class
            prototypes: linear, mlp or cosine.
    """

    head: Literal["linear", "mlp", "cosine"] = "linear"


@dataclass(kw_only=True)
class ClipOptions(Checked):
    """clip task

    Attributes:
        templates: Prompt templates of the clip task's label texts and zero-shot validation: simple, imagenet80,
            or a file with one {} template a line.
        wise_ft: The clip task also writes RUN/wise-ft-A/: the WiSE-FT weights (1 - A) * original + A * fine-tuned.
    """

    _within: ClassVar[dict[str, str]] = {
        "wise_ft": "[0, 1]",
    }

    templates: str = "simple"
    wise_ft: float | None = None


@dataclass(kw_only=True)
class FusionOptions(ProductOptions):
    """fusion task

    Attributes:
        text_model: The fusion task's text tower from another spec (e.g. hf:DIR of a sentence-transformers
            folder, mean pooling); --model is then any image model (timm included). Both towers from the --model
            CLIP spec when unset.
        freeze_encoders: Keep both towers frozen (fusion stage 1): each image view and text is embedded once,
            cached, and only the head trains, on the cache.
        ablate: The fusion task also trains image-only and text-only heads in the same run and reports them.
    """

    text_model: str | None = None
    freeze_encoders: bool = False
    ablate: bool = False


@dataclass(kw_only=True)
class ArcfaceOptions(Checked):
    """arcface task

    Attributes:
        embed_dim: The arcface task's embedding length (Linear from the backbone's features).
        embed_norm: batchnorm after the arcface embedding's Linear, or none.
        margin_loss: The arcface task's loss: arcface (angular margin), or cosface (cosine margin; try
            --arcface-m 0.35).
        arcface_s: Scale s of the margin loss (below 10 classes, s=48 with m=0.3 suits better).
        arcface_m: Margin m (radians for arcface); 0 during --freeze-epochs, the warm-up in which the backbone is
            frozen and the embedding and class centres settle.
        subcenters: Class centres per class (sub-center ArcFace, which tolerates noisy labels, when above 1).
        classes_per_batch: P of the arcface task's P×K batches (when unset, --batch-size / K classes, at most
            every class, so the batch holds about --batch-size images); the batch has P×K images.
        samples_per_class: K of the P×K batches; a class with fewer images is drawn with replacement (reported).
    """

    _at_least: ClassVar[dict[str, int]] = {
        "embed_dim": 1,
        "subcenters": 1,
        "classes_per_batch": 1,
        "samples_per_class": 1,
    }
    _within: ClassVar[dict[str, str]] = {
        "arcface_s": "(0, inf)",
        "arcface_m": "[0, inf)",
    }

    embed_dim: int = 512
    embed_norm: Literal["batchnorm", "none"] = "batchnorm"
    margin_loss: Literal["arcface", "cosface"] = "arcface"
    arcface_s: float = 64.0
    arcface_m: float = 0.5
    subcenters: int = 1
    classes_per_batch: int | None = None
    samples_per_class: int = 4


@dataclass(kw_only=True)
class ClassifierConfig(ClassifierOptions, TrainConfig):
    """Everything `pictag train --task classifier` takes."""


@dataclass(kw_only=True)
class ClipConfig(ClipOptions, TrainConfig):
    """Everything `pictag train --task clip` takes."""


@dataclass(kw_only=True)
class FusionConfig(FusionOptions, TrainConfig):
    """Everything `pictag train --task fusion` takes."""


@dataclass(kw_only=True)
class ArcfaceConfig(ArcfaceOptions, TrainConfig):
    """Everything `pictag train --task arcface` takes."""


# Each task's own options; a task not listed here (fewshot, or one registered elsewhere) takes `TrainConfig` alone.
TASK_OPTIONS: dict[str, type] = {
    "classifier": ClassifierOptions,
    "clip": ClipOptions,
    "fusion": FusionOptions,
    "arcface": ArcfaceOptions,
}
_TASK_CONFIGS: dict[str, type[TrainConfig]] = {
    "classifier": ClassifierConfig,
    "clip": ClipConfig,
    "fusion": FusionConfig,
    "arcface": ArcfaceConfig,
}


def train_config(task: str | None) -> type[TrainConfig]:
    """The config class of `pictag train --task TASK`: the shared options and the task's own (classifier's when
    `task` is None)."""
    return _TASK_CONFIGS.get(task or TrainConfig.task, TrainConfig)


# A run's config.yaml from before the tasks had their own options lists every task's: `load_config` drops those of
# other tasks that hold their default, which no one chose, rather than refuse the file.
_TASK_DEFAULTS = {f.name: f.default for options in TASK_OPTIONS.values() for f in fields(options)}
_TASK_DEFAULTS |= dict.fromkeys(ProductOptions._renamed)  # and the product columns' former names, unset
for _config in (TrainConfig, *_TASK_CONFIGS.values()):
    _own = {f.name for f in fields(_config)}
    _config._unused_defaults = {name: value for name, value in _TASK_DEFAULTS.items() if name not in _own}


@dataclass(kw_only=True)
class FinetuneConfig(RuntimeOptions, ModelOptions):
    """Everything `pictag fewshot-train` takes.

    Attributes:
        data: Folder of <class>/*.jpg.
        val: Folder of <class>/*.jpg with the same classes; picks best.pth.
        out: Checkpoint folder.
        unfreeze_blocks: Blocks trained, counted from the last.
        epochs: Training epochs.
        batch_size: Images per training step.
        lr: Learning rates of the unfrozen blocks and the head: one number for both, or per group, e.g.
            backbone=1e-5,head=5e-4 (a group not named: these).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        warmup_epochs: Epochs of linear learning-rate warmup before the cosine decay.
        seed: Seed of initialisation, data order and augmentation.
        fresh: Start over, ignoring OUT/last.ckpt (a rerun otherwise continues from it).
    """

    _out: ClassVar[str] = "folder"
    _positional: ClassVar[tuple[str, ...]] = ("data",)
    _required: ClassVar[tuple[str, ...]] = ("data",)
    _renamed: ClassVar[dict[str, str | tuple[str, str]]] = {
        "train_data": "data",
        "val_data": "val",
        "lr_backbone": ("lr", "backbone"),
        "lr_head": ("lr", "head"),
    }
    _at_least: ClassVar[dict[str, int]] = {"epochs": 1, "unfreeze_blocks": 0}
    _within: ClassVar[dict[str, str]] = {
        "weight_decay": "[0, inf)",
        "label_smoothing": "[0, 1)",
        "warmup_epochs": "[0, inf)",
        "seed": "[0, 4294967295]",
    }

    data: str | None = None
    val: str | None = None
    out: str = "ckpt"
    unfreeze_blocks: int = 6
    epochs: int = 30
    batch_size: int = 32
    lr: str = "backbone=1e-5,head=5e-4"
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0
    fresh: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        group_values(self.lr, "--lr", "(0, inf)")
