"""`pictag train`: fine-tune a backbone and a head on labelled images, on one engine (see docs/training.md)."""

from __future__ import annotations

from pictag.cli.common import add_command

EXAMPLES = """examples:
  pictag train ClassDataset/ --model timm:tf_efficientnet_lite0 --checkpoint w.pth --val-split 0.2 --out runs/parts
  pictag train ClassDataset/ --val-split 0.2 --freeze-epochs 1 --epochs 6 --lr backbone=1e-5,head=3e-4 --out runs/two
  torchrun --nproc-per-node 2 -m pictag train ClassDataset/ --out runs/ddp     # DDP, the same command
  pictag classify photos/ --model runs/parts --out preds.csv                   # the run's own classes
  pictag train products.csv --task fusion --images images/ --folds 5 --freeze-encoders --epochs 5 --out runs/s1
  pictag train products.csv --task fusion --images images/ --folds 5 --init-from runs/s1 --out runs/s2 \
      --lr image=1e-5,text=1e-5,head=3e-4                                      # see docs/multimodal.md
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "train",
        "pictag.train.options:TrainConfig",
        "pictag.train.run:run",
        help="train a classifier (or another --task) on DATA/<class>/*.jpg or a table",
        description="Fine-tune a backbone and a head initialised from the class prototypes with AdamW over named "
        "parameter groups, warmup and a cosine/linear/plateau schedule, mixed precision chosen for the device, "
        "and DDP under torchrun. OUT gets last.ckpt (a rerun continues from it; --fresh starts over), best/ "
        "(the model: --model OUT), metrics.csv, curves.png, confusion.png, per_class.csv, tb/ and config.yaml.",
        examples=EXAMPLES,
    )
