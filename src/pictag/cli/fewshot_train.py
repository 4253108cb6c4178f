"""`pictag fewshot-train`: fine-tune the last N blocks of an encoder with a residual classifier head."""

from __future__ import annotations

from pictag.cli.common import add_command

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
        "pictag.train.finetune:run",
        help="fine-tune the last N blocks of an encoder on DATA/<class>/*.jpg",
        description="Freeze all but the last N blocks of the image encoder, add a cosine classifier initialised "
        "from the class prototypes plus a learned zero-initialised residual, and train with AdamW (separate "
        "backbone and head learning rates), a warmed-up cosine schedule, mixed precision on GPU and standard "
        "augmentations (--lr backbone=...,head=...). OUT gets best.pth and last.pth (load with --checkpoint), metrics.csv, curves.png and "
        "config.yaml. A killed run continues from OUT/last.ckpt when run again; --fresh starts over.",
        examples=EXAMPLES,
    )
