"""`pictag fewshot-train`: fine-tune the last N blocks of an image encoder with a residual cosine head.

The training is `pictag train --task fewshot` on the one engine (`pictag.train.engine`); this module maps the
command's options onto it and writes the checkpoints it has always written, which `--checkpoint` loads.

Checkpoint format (`best.pth`, `last.pth`)::

    {"state_dict": <the encoder module's state dict: loads through create_model(spec, checkpoint=path)>,
     "pictag": {"model": spec, "classes": [...], "head_weight": (C, D) tensor, "head_scale": float,
                "epoch": int, "val_accuracy": float}}

The run folder also holds what every `pictag train` run does (best/, last.ckpt, tb/, confusion.png, ...), and a
rerun continues from its last.ckpt, exactly, as `pictag train` does (`--fresh` starts over).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pictag.config import dump_config, group_values, load_config, options_of
from pictag.errors import PictagError
from pictag.storage.files import atomic_path
from pictag.train.options import FinetuneConfig, TrainConfig


@dataclass
class FinetuneResult:
    best: Path
    last: Path
    metrics: Path
    best_val_accuracy: float | None
    epochs: int
    seconds: float

    def summary(self) -> str:
        val = "n/a (no --val)" if self.best_val_accuracy is None else f"{self.best_val_accuracy * 100:.2f} %"
        return (
            f"trained {self.epochs} epoch(s) in {self.seconds:.1f} s; best val accuracy {val} -> {self.best} "
            f"(load with --checkpoint); metrics -> {self.metrics}"
        )


def train_config(cfg: FinetuneConfig) -> TrainConfig:
    """The `pictag train` options that do what `cfg` asks."""
    if not Path(cfg.data).is_dir():
        raise PictagError(f"{cfg.data} is not a folder: give a folder of <class>/*.jpg")
    given = group_values(cfg.lr, "--lr", "(0, inf)")
    rates = {"backbone": 1e-5, "head": 5e-4} | (
        {"backbone": given[None], "head": given[None]} if None in given else given
    )
    return TrainConfig(
        data=cfg.data,
        val=cfg.val,
        out=cfg.out,
        task="fewshot",
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=",".join(f"{group}={rate}" for group, rate in rates.items()),
        weight_decay=str(cfg.weight_decay),
        label_smoothing=cfg.label_smoothing,
        warmup_epochs=cfg.warmup_epochs,
        unfreeze_blocks=cfg.unfreeze_blocks,
        seed=cfg.seed,
        fresh=cfg.fresh,
        model=cfg.model,
        checkpoint=cfg.checkpoint,
        random_weights=cfg.random_weights,
        device=cfg.device,
        precision=cfg.precision,
        workers=cfg.workers,
        max_pixels=cfg.max_pixels,
    )


def finetune(data: str | None = None, out: str | None = None, **options) -> FinetuneResult:
    """Fine-tune, validating after every epoch; keep the best (by val accuracy) and the last checkpoint. The Python
    twin of `pictag fewshot-train`: options are the FinetuneConfig fields.

    Raises:
        PictagError: bad folders or options, or a model whose blocks pictag does not know.
    """
    from pictag.train.run import train

    started = time.perf_counter()
    cfg = load_config(FinetuneConfig, data=data, out=out, **options)
    result = train(**options_of(train_config(cfg)))
    out = Path(cfg.out)
    dump_config(cfg, out / "config.yaml")  # this command's options, so --config repeats it
    spec = cfg.model
    best_row = next((r for r in _history(out) if r["epoch"] == result.best_epoch), {})
    best = _save(out / "best.pth", out / "best" / "model.safetensors", spec, best_row)
    last = _save(out / "last.pth", out / "last.ckpt", spec, _history(out)[-1])
    return FinetuneResult(
        best, last, out / "metrics.csv", best_row.get("val_top1"), result.epochs, time.perf_counter() - started
    )


def _history(out: Path) -> list[dict]:
    return torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["history"]


def _save(path: Path, weights: Path, spec: str, row: dict) -> Path:
    """Write a fewshot-train checkpoint from the run's best/ safetensors or its last.ckpt."""
    from pictag.heads.trained import ResidualCosineHead
    from pictag.models.checkpoint import read_state_dict

    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(weights)
        classes = _classes(weights.parent)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)["task"]
        classes = _classes(weights.parent / "best")
    encoder = {k.removeprefix("encoder.module."): v for k, v in state.items() if k.startswith("encoder.module.")}
    head_state = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    head = ResidualCosineHead(num_classes=len(classes), dim=head_state["prototypes"].shape[1])
    head.load_state_dict(head_state)
    meta = {"model": spec, "classes": classes, "epoch": row.get("epoch"), "val_accuracy": row.get("val_top1")}
    checkpoint = {
        "state_dict": encoder,
        "pictag": {**meta, "head_weight": head.weight.detach(), "head_scale": head.log_scale.exp().item()},
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    read_state_dict(path)  # fail now, not at load time, if the file would not load back
    return path


def _classes(best: Path) -> list[str]:
    import json

    return json.loads((best / "pictag.json").read_text())["classes"]
