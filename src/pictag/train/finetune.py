"""`pictag fewshot-train`: fine-tune the last N blocks of an image encoder with a residual cosine head.

A plain PyTorch loop rather than Lightning: one optimiser, one loss, one process; the checkpoint must be a plain
state dict that `create_model(spec, checkpoint=...)` loads back, and the loop is shorter than the Lightning
module, trainer and callback that would wrap it.

Checkpoint format (`best.pth`, `last.pth`)::

    {"state_dict": <the encoder module's state dict: loads through create_model(spec, checkpoint=path)>,
     "pictag": {"model": spec, "classes": [...], "head_weight": (C, D) tensor, "head_scale": float,
                "epoch": int, "val_accuracy": float}}
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pictag.config import dump_config, load_config
from pictag.data.decode import decode_image
from pictag.data.sources import Source, open_source
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.heads.prototype import class_prototypes
from pictag.heads.trained import ResidualCosineHead
from pictag.models.base import Encoder
from pictag.models.checkpoint import read_state_dict
from pictag.models.preprocess import TrainTransform
from pictag.options import FinetuneConfig
from pictag.pipeline.runner import embed_all
from pictag.train.blocks import unfreeze_last_blocks

log = logging.getLogger(__name__)

# Milder than timm's ImageNet defaults (scale 0.08, jitter 0.4): with a few shots per class, a crop of 8 % of an
# image often loses the object, and the pretrained features need nudging, not relearning.
_AUGMENT = dict(scale=(0.5, 1.0), color_jitter=0.2)


@dataclass
class FinetuneResult:
    best: Path
    last: Path
    metrics: Path
    best_val_accuracy: float | None
    epochs: int
    seconds: float

    def summary(self) -> str:
        val = "n/a (no --val-data)" if self.best_val_accuracy is None else f"{self.best_val_accuracy * 100:.2f} %"
        return (
            f"trained {self.epochs} epoch(s) in {self.seconds:.1f} s; best val accuracy {val} -> {self.best} "
            f"(load with --checkpoint); metrics -> {self.metrics}"
        )


def run(cfg: FinetuneConfig) -> FinetuneResult:
    """Fine-tune, validating after every epoch; keep the best (by val accuracy) and the last checkpoint.

    Raises:
        PictagError: bad folders or options, or a model whose blocks pictag does not know.
    """
    started = time.perf_counter()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise PictagError(f"--epochs and --batch-size must be at least 1 (got {cfg.epochs}, {cfg.batch_size})")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    encoder = cfg.create_encoder()
    workers = default_workers() if cfg.workers is None else cfg.workers
    trainable = unfreeze_last_blocks(encoder.module, cfg.unfreeze_blocks)

    train, classes = _labelled(cfg.train_data, None)
    val = _labelled(cfg.val_data, classes)[0] if cfg.val_data else None  # checked now, embedded once per epoch
    train_features, train_keys, train_labels = _embed(train, classes, encoder, workers)
    head = ResidualCosineHead(class_prototypes(train_features, torch.tensor(train_labels), len(classes)))
    head.to(encoder.device)
    loader = torch.utils.data.DataLoader(
        _TrainImages(cfg.train_data, train_keys, train_labels, encoder.preprocess.train_transform(**_AUGMENT)),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=len(train_keys) > cfg.batch_size,
        pin_memory=encoder.device.type == "cuda",
        persistent_workers=workers > 0,
    )
    groups = [{"params": list(head.parameters()), "lr": cfg.lr_head}]
    if trainable:
        groups.append({"params": trainable, "lr": cfg.lr_backbone})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    warmup = min(int(cfg.warmup_epochs * len(loader)), total // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine(step, warmup, total))
    scaler = torch.amp.GradScaler(encoder.device.type, enabled=encoder.autocast_dtype == torch.float16)

    metrics_path = out / "metrics.csv"
    history: list[dict] = []
    best_accuracy = None
    for epoch in range(1, cfg.epochs + 1):
        loss = _train_epoch(encoder, head, loader, optimizer, scheduler, scaler, cfg.label_smoothing, epoch)
        row = {"epoch": epoch, "train_loss": loss, "val_accuracy": None}
        if val is not None:
            row["val_accuracy"] = _accuracy(encoder, head, val, classes, workers)
        history.append(row)
        _write_metrics(history, metrics_path)
        meta = {"model": encoder.spec, "classes": classes, "epoch": epoch, "val_accuracy": row["val_accuracy"]}
        _save(out / "last.pth", encoder, head, meta)
        if val is None or best_accuracy is None or row["val_accuracy"] > best_accuracy:
            best_accuracy = row["val_accuracy"]
            _save(out / "best.pth", encoder, head, meta)
        log.info("epoch %d: train loss %.4f, val accuracy %s", epoch, loss, row["val_accuracy"])
    _plot(history, out / "curves.png")
    return FinetuneResult(
        out / "best.pth", out / "last.pth", metrics_path, best_accuracy, cfg.epochs, time.perf_counter() - started
    )


def finetune(train_data: str, out: str, **options) -> FinetuneResult:
    """Python twin of `pictag fewshot-train`: options are the FinetuneConfig fields."""
    return run(load_config(FinetuneConfig, train_data=train_data, out=out, **options))


def _cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _labelled(folder: str, classes: list[str] | None) -> tuple[Source, list[str]]:
    """The labelled source of folder/<class>/... and its classes, checked against `classes` when given."""
    if not Path(folder).is_dir():  # _TrainImages reads the training images as files below the folder
        raise PictagError(f"{folder} is not a folder: give a folder of <class>/*.jpg")
    source = open_source(folder, labelled=True)
    if classes is None:
        if len(source.classes) < 2:
            raise PictagError(
                f"{folder} needs at least two class folders of images (<class>/*.jpg), found {list(source.classes)}"
            )
        classes = list(source.classes)
    unknown = sorted(set(source.classes) - set(classes))
    if unknown:
        raise PictagError(f"{folder} has classes that training data lacks: {', '.join(unknown)}: use the same classes")
    return source, classes


def _embed(
    source: Source, classes: list[str], encoder: Encoder, workers: int, desc: str = "embed"
) -> tuple[torch.Tensor, list[str], list[int]]:
    """Embeddings, readable keys and class indices of a labelled source; unreadable images are logged and left out."""
    encoder.eval()
    embedded = embed_all(source, encoder, batch_size=64, workers=workers, desc=f"{desc} {source.uri}")
    for key, reason in embedded.errors:
        log.warning("%s/%s left out: %s", source.uri, key, reason)
    return embedded.features, embedded.keys, [classes.index(label) for label in embedded.labels]


class _TrainImages(torch.utils.data.Dataset):
    """Training images as random uint8 crops, normalised later as a batch on the device like the eval path."""

    def __init__(self, root: str, keys: list[str], labels: list[int], transform: TrainTransform):
        self.root, self.keys, self.labels, self.transform = root, keys, labels, transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = decode_image(Path(self.root, self.keys[i]).read_bytes(), self.transform.min_decode_size)
        return torch.from_numpy(self.transform(image)), self.labels[i]


def _train_epoch(encoder, head, loader, optimizer, scheduler, scaler, label_smoothing: float, epoch: int) -> float:
    encoder.train()
    # Batch statistics of a few dozen images would overwrite the pretrained ones: keep every norm layer frozen.
    for m in encoder.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    total, count = 0.0, 0
    device = encoder.device
    for crops, labels in tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, disable=None):
        pixels = encoder.preprocess.normalize(crops.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        with encoder.autocast():
            features = encoder.forward_image(pixels)
        loss = F.cross_entropy(head(features.float()), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
    encoder.eval()
    return total / max(count, 1)


@torch.no_grad()
def _accuracy(encoder, head, source: Source, classes: list[str], workers: int) -> float:
    features, _, labels = _embed(source, classes, encoder, workers, desc="validate")
    if not labels:
        return 0.0
    predicted = head(features.to(encoder.device)).argmax(dim=-1).cpu()
    return (predicted == torch.tensor(labels)).float().mean().item()


def _save(path: Path, encoder: Encoder, head: ResidualCosineHead, meta: dict) -> None:
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in encoder.module.state_dict().items()},
        "pictag": {**meta, "head_weight": head.weight.detach().cpu(), "head_scale": head.log_scale.exp().item()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    read_state_dict(path)  # fail now, not at load time, if the file would not load back


def _write_metrics(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    ax.set(xlabel="epoch", ylabel="train loss")
    if history[0]["val_accuracy"] is not None:
        other = ax.twinx()
        other.plot(epochs, [row["val_accuracy"] * 100 for row in history], marker="s", color="C1", label="val acc")
        other.set_ylabel("val accuracy (%)")
    fig.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
