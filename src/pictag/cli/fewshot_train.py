"""`pictag fewshot-train`: fine-tune the last N blocks of an image encoder with a residual classifier head."""

from __future__ import annotations

import argparse

from pictag.cli.common import add_model_args, add_runtime_args, options

EXAMPLES = """examples:
  pictag fewshot-train --train-data train/ --val-data val/ --unfreeze-blocks 6 --epochs 30 --out ckpt/ \\
      --model timm:tf_efficientnet_lite0 --checkpoint efficientnet-lite0.pth
  pictag fewshot tasks/ result.csv --model timm:tf_efficientnet_lite0 --checkpoint ckpt/best.pth
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fewshot-train",
        help="fine-tune the last N blocks of an encoder on TRAIN/<class>/*.jpg",
        description="Freeze all but the last N blocks of the image encoder, add a cosine classifier initialised "
        "from the class prototypes plus a learned zero-initialised residual, and train with AdamW (separate "
        "backbone and head learning rates), a warmed-up cosine schedule, mixed precision on GPU and standard "
        "augmentations. OUT gets best.pth and last.pth (load with --checkpoint), metrics.csv, curves.png and "
        "config.yaml.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--train-data", help="folder of <class>/*.jpg")
    p.add_argument("--val-data", help="folder of <class>/*.jpg with the same classes; picks best.pth")
    p.add_argument("--out", help="checkpoint folder (default ckpt)")
    p.add_argument("--unfreeze-blocks", type=int, help="blocks trained, counted from the last (default 6)")
    p.add_argument("--epochs", type=int, help="default 30")
    p.add_argument("--lr-backbone", type=float, help="learning rate of the unfrozen blocks (default 1e-5)")
    p.add_argument("--lr-head", type=float, help="learning rate of the head (default 5e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05)")
    p.add_argument("--label-smoothing", type=float, help="default 0.1")
    p.add_argument("--seed", type=int, help="default 0")
    add_model_args(p)
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.config import load_config
    from pictag.train.finetune import FinetuneConfig
    from pictag.train.finetune import run as finetune

    overrides = options(args)
    overrides["out"] = overrides["out"] or "ckpt"
    print(finetune(load_config(FinetuneConfig, args.config, **overrides)).summary())
    return 0
