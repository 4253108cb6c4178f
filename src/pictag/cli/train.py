"""`pictag train`: fine-tune a backbone and a head on labelled images, on one engine (see docs/training.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.train.options import TrainConfig

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
        "pictag.cli.train:run",
        config_for="pictag.cli.train:config_for",
        explain_unknown="pictag.cli.train:other_tasks_option",
        help="train a classifier (or another --task) on DATA/<class>/*.jpg or a table",
        description="Fine-tune a backbone and a head initialised from the class prototypes with AdamW over named "
        "parameter groups, warmup and a cosine/linear/plateau schedule, mixed precision chosen for the device, "
        "and DDP under torchrun. OUT gets last.ckpt (a rerun continues from it; --fresh starts over), best/ "
        "(the model: --model OUT), metrics.csv, curves.png, confusion.png, per_class.csv, tb/ and config.yaml. "
        "Each task has its own options besides the shared ones: `pictag train --task fusion --help` lists fusion's "
        "(classifier's are listed when no --task is given).",
        examples=EXAMPLES,
    )


def config_for(args: list[str]) -> type:
    """The config class of the task that `args` name, by --task or in the --config file (classifier's when neither
    does), so that each task's options are parsed, and listed by --help, only with it."""
    from pictag.train.options import train_config

    task = _flag(args, "--task")
    config = _flag(args, "--config")
    if task is None and config is not None and os.path.isfile(config):
        import yaml

        try:  # a broken file is reported, naming it, when the config is loaded
            values = yaml.safe_load(Path(config).read_text())
        except yaml.YAMLError:
            values = None
        task = values.get("task") if isinstance(values, dict) else None
    return train_config(task if isinstance(task, str) else None)


def other_tasks_option(unknown: list[str]) -> str | None:
    """For the first of the `unknown` arguments that is an option of other tasks, the line that names them
    (`--embed-dim is an option of --task arcface`); None when no task takes any of them."""
    from dataclasses import fields

    from pictag.train.options import TASK_OPTIONS

    for arg in unknown:
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        field = flag[2:].replace("-", "_")
        tasks = [name for name, options in TASK_OPTIONS.items() if field in {f.name for f in fields(options)}]
        if tasks:
            return f"{flag} is an option of " + " or ".join(f"--task {task}" for task in tasks)
    return None


def _flag(args: list[str], name: str) -> str | None:
    """The value of the last `name VALUE` or `name=VALUE` in `args`, as argparse reads it."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def run(cfg: TrainConfig):
    from pictag.config import options_of
    from pictag.train.run import train

    return train(**options_of(cfg))
