"""`pictag train`: a labelled set, a model and a task in; a run folder out (see `pictag.train.engine`).

    pictag train ClassDataset/ --model timm:tf_efficientnet_lite0 --checkpoint w.pth --val-split 0.2 --out runs/parts

Running the same command again continues from `RUN/last.ckpt` and says so first; `--fresh` starts over.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path

from pictag.config import load_config
from pictag.errors import PictagError
from pictag.train.options import TrainConfig, train_config

# What options left unset (None) mean when the task has no value of its own (`Task.defaults`).
DEFAULTS = {"label_smoothing": 0.1, "early_stop": "val_top1"}


def train(data: str, out: str, **options):
    """Train the task `task=` (classifier's by default) on `data` into the run folder `out`; returns a
    `TrainResult` (a `CVResult` for a cross-validated task's folds, see `pictag.train.kfold`). The Python twin of
    `pictag train`: options are the fields of the task's config (`train_config(task)`).

    Raises:
        PictagError: bad data or options (one line each), or a last.ckpt made with other options.
    """
    from pictag.train.task import get_task

    cfg = load_config(train_config(options.get("task")), data=data, out=out, **options)
    task = get_task(cfg.task)
    cfg = resolve_defaults(cfg, task.defaults)
    if cfg.early_stop not in task.metrics:
        raise PictagError(
            f"--early-stop {cfg.early_stop}: the {cfg.task} task reports {', '.join(task.metrics)}; watch one of those"
        )
    if task.cross_validates:
        folds = task.fold_names(cfg)
        if folds is not None:
            from pictag.train.kfold import run_folds

            return run_folds(cfg, folds, train_one)
    return train_one(cfg)


def resolve_defaults(cfg: TrainConfig, task_defaults: dict) -> TrainConfig:
    """`cfg` with the options left unset given the task's values, else pictag's (`DEFAULTS`)."""
    values = {k: v for k, v in {**DEFAULTS, **task_defaults}.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **values) if values else cfg


def train_one(cfg: TrainConfig):
    """One training run of `cfg` (defaults resolved) into `cfg.out`; returns a `TrainResult`."""
    import numpy as np
    import torch

    from pictag.device import pick_device
    from pictag.storage.parts import PartStore
    from pictag.train.data import check_folder
    from pictag.train.engine import LAST, Engine, check_classes, choose_settings, make_fabric, read_last
    from pictag.train.optim import per_group
    from pictag.train.task import create_task, get_task

    def check_groups(names) -> None:
        if names:  # refuse unknown group names before any work
            per_group(cfg.lr, names, "--lr")
            per_group(cfg.weight_decay, names, "--weight-decay")

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PictagError(f"--out {out} is a file: name a folder for the run")
    first = int(os.environ.get("RANK", "0")) == 0
    check_folder(cfg.data)
    if cfg.val:
        check_folder(cfg.val)
    resume = read_last(out, cfg)
    lock = PartStore(out)
    if first:
        lock.lock()  # a second run on the same folder is refused at once, naming the process
    try:
        # Everything that can refuse the input comes before Lightning is even imported.
        data = get_task(cfg.task).load_data(cfg)
        check_classes(resume, data.classes, out)
        if resume is not None and first:
            where = f"epoch {resume['epoch'] + 1}" + (f", batch {resume['batch']}" if resume["batch"] else "")
            done = resume["epoch"] >= cfg.epochs or resume["early"]["stopped"]
            verb = "already trained" if done else "continuing"
            print(f"{verb} {out} from {LAST} ({where}, step {resume['step']}); --fresh starts over", flush=True)
        data.resuming = resume is not None or cfg.init_from is not None  # weights come from a file: no prototypes
        # Seeded first: random weights (--random-weights) are then the same in a rerun that continues a run.
        torch.manual_seed(cfg.seed)
        # In the precision training computes in, so that the heads' prototypes are what the first step sees.
        precision = choose_settings(cfg, pick_device(cfg.device)).precision
        encoder = get_task(cfg.task).create_encoder(dataclasses.replace(cfg, precision=precision))
        if cfg.image_size:
            encoder.preprocess = encoder.preprocess.at_size(cfg.image_size)
        if cfg.unfreeze_blocks is not None or cfg.layer_decay:
            from pictag.train.blocks import image_blocks

            blocks, _ = image_blocks(encoder.module)
            if cfg.unfreeze_blocks is not None and not 0 <= cfg.unfreeze_blocks <= len(blocks):
                raise PictagError(f"--unfreeze-blocks {cfg.unfreeze_blocks}: {cfg.model} has {len(blocks)} blocks")
        check_groups(get_task(cfg.task).group_names)
        fabric, settings = make_fabric(cfg)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        encoder.to(fabric.device)
        task = create_task(cfg.task, encoder, data, cfg)
        check_groups(list(task.param_groups()))
        if cfg.init_from and resume is None:
            init_from(task, cfg.init_from)
        if fabric.global_rank == 0:
            if cfg.fresh:
                for stale in (out / LAST, out / "best"):
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
            out.mkdir(parents=True, exist_ok=True)  # the engine writes config.yaml, with what it chose
        result = Engine(fabric, task, data, cfg, settings, resume).fit()
        if fabric.global_rank == 0:
            task.after_fit(out)
        result.resumed = result.resumed and f"continued from {result.resumed}"
        return result
    finally:
        lock.unlock()


def init_from(task, run: str) -> None:
    """Load another run's best weights into the task (stage 2 after stage 1).

    Raises:
        PictagError: not a run folder, or weights of another architecture or other classes.
    """
    from pictag.models.run_dir import backbone_spec, load_run, load_strict

    loaded = load_run(run, device="cpu")
    encoder, head = task.inference_model()
    if loaded.meta.get("backbone") != backbone_spec(encoder):
        raise PictagError(
            f"--init-from {run} holds a {loaded.meta.get('backbone')} model, not {backbone_spec(encoder)}: use the "
            "same --model"
        )
    if head is not None and loaded.meta.get("classes") != task.classes():
        raise PictagError(
            f"--init-from {run} was trained on other classes ({loaded.meta.get('classes')}): use its data"
        )
    load_strict(encoder, loaded.encoder.state_dict(), f"--init-from {run}'s backbone")
    if head is not None and loaded.head is not None:
        load_strict(head, loaded.head.state_dict(), f"--init-from {run}'s head")
