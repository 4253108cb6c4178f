"""`pictag fewshot-train`: fine-tune the last N blocks of an encoder with a residual classifier head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.train.options import FinetuneConfig

EXAMPLES = """examples:
  pictag fewshot-train train/ --val val/ --unfreeze-blocks 6 --epochs 30 --out ckpt/ \\
      --model timm:tf_efficientnet_lite0 --checkpoint efficientnet-lite0.pth
  pictag fewshot tasks/ --out result.csv --model timm:tf_efficientnet_lite0 --checkpoint ckpt/best.pth
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "fewshot-train",
        "pictag.train.options:FinetuneConfig",
        "pictag.cli.fewshot_train:run",
        help="fine-tune the last N blocks of an encoder on DATA/<class>/*.jpg",
        description="Freeze all but the last N blocks of the image encoder, add a cosine classifier initialised "
        "from the class prototypes plus a learned zero-initialised residual, and train with AdamW (separate "
        "backbone and head learning rates), a warmed-up cosine schedule, mixed precision on GPU and standard "
        "augmentations (--lr backbone=...,head=...). OUT gets best.pth and last.pth (load with --checkpoint), metrics.csv, curves.png and "
        "config.yaml. A killed run continues from OUT/last.ckpt when run again; --fresh starts over.",
        examples=EXAMPLES,
    )


def run(cfg: FinetuneConfig):
    from pictag.config import options_of
    from pictag.train.finetune import finetune

    return finetune(**options_of(cfg))
