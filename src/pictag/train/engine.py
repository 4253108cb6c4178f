"""The one training loop. Lightning Fabric owns devices, precision, DDP, launching and checkpoint I/O; the loop,
the schedule, phases, validation, early stopping and the run folder are ours, as in open_clip and timm.

    fabric = make_fabric(cfg)                      # devices, precision; under torchrun: DDP (gloo on CPU)
    engine = Engine(fabric, task, data, cfg, settings)
    result = engine.fit()                          # continues from RUN/last.ckpt when there is one

Exact resume: `last.ckpt` is written atomically (a temporary file, then a rename) at the end of every epoch and
every `--save-every` optimiser steps, with the task's weights, optimiser, schedule, gradient scaler, EMA, epoch,
step, the batch reached in the epoch, the early-stopping state and the random states. The data of a batch depends
only on (seed, epoch, batch) (see `pictag.train.data`), and the global random generator is reseeded from
(seed, rank, epoch, batch) before each batch, so a run killed anywhere and continued computes what an
uninterrupted one does.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pictag.data.crops import item_seed
from pictag.errors import PictagError
from pictag.storage.files import atomic_file, commit
from pictag.train import data as train_data
from pictag.train.loggers import Loggers, ProgressLines, parse_loggers
from pictag.train.optim import DEFAULT_BACKBONE_LR, EMA, Schedule, block_depths, optimizer_groups, per_group
from pictag.train.task import Task

log = logging.getLogger(__name__)

LAST = "last.ckpt"
# Options that do not change what is computed: a rerun may change them and still continue.
UNGUARDED = ("out", "workers", "fresh", "save_every", "device", "max_pixels", "logger", "log_every")


@dataclass(frozen=True)
class Settings:
    """What was chosen for this machine (each from an option when given): see `choose_settings`.

    Attributes:
        device: Where training runs ("cpu", "cuda:0", ...).
        precision: What it computes in: fp32, tf32, bf16 or fp16 (autocast, weights in fp32).
        why: Why that precision, for the banner.
        workers: DataLoader processes.
        accumulate: Batches per optimiser step asked for (the memory check may split each batch further).
    """

    device: str
    precision: str
    why: str
    workers: int
    accumulate: int

    @property
    def fabric_precision(self) -> str:
        """Lightning Fabric's name of `precision`."""
        return {"fp32": "32-true", "tf32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}[self.precision]


def torchrun_world() -> tuple[int, int] | None:
    """(processes per node, nodes) when started by torchrun, else None."""
    if "LOCAL_WORLD_SIZE" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    local = int(os.environ["LOCAL_WORLD_SIZE"])
    return local, max(int(os.environ["WORLD_SIZE"]) // local, 1)


def backbone_frozen(cfg) -> bool:
    """Whether the backbone never trains in a run of `cfg`, so that its epochs can read the cache instead of the
    images: --freeze-epochs covers every epoch, and the weights are the model's own (--init-from loads other ones
    after the task is built; a resumed run had the same options, so it never unfroze either)."""
    return cfg.freeze_epochs >= cfg.epochs and not cfg.init_from


def choose_settings(cfg, device: torch.device) -> Settings:
    """Precision, data workers and accumulation for this device, each overridden by its option when given.

    Precision: `pictag.device.training_precision` (bf16 on GPUs that have it, fp16 with a gradient scaler on older
    ones, fp32 on CPUs unless the backbone never trains: then inference's choice). Workers: one per core beside a
    GPU (at most 16), half the cores on the CPU. One batch per optimiser step: the memory check before the first
    step (`pictag.train.memory`) splits a batch that does not fit, on a GPU as on the CPU.
    """
    from pictag.device import default_workers, training_precision

    precision, why = training_precision(device, cfg.precision, backward=not backbone_frozen(cfg))
    return Settings(
        str(device),
        precision,
        why,
        default_workers(device) if cfg.workers is None else cfg.workers,
        1 if cfg.accumulate is None else cfg.accumulate,
    )


def make_fabric(cfg):
    """A launched Fabric: one device, or DDP over torchrun's processes (NCCL on GPUs, gloo on CPU)."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    from pictag.device import pick_device

    device = pick_device(cfg.device)
    accelerator = {"cuda": "cuda", "mps": "mps"}.get(device.type, "cpu")
    world = torchrun_world()
    kwargs = {"accelerator": accelerator, "devices": [device.index or 0] if device.type == "cuda" else 1}
    if world is not None:
        # Parameters frozen for --freeze-epochs take no part in those steps' backward: DDP must look for them.
        strategy = DDPStrategy(find_unused_parameters=cfg.freeze_epochs > 0)
        kwargs = {"accelerator": accelerator, "devices": world[0], "num_nodes": world[1], "strategy": strategy}
    settings = choose_settings(cfg, device)
    if world is not None and device.type == "cpu":
        # Each process gets its share of the cores: more threads than cores makes every step many times slower.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world[0]))
    fabric = Fabric(precision=settings.fabric_precision, **kwargs)
    fabric.launch()
    if fabric.global_rank == 0:
        log.warning(
            "training in %s on %s (%s)%s",
            settings.precision,
            fabric.device,
            settings.why,
            "; --precision fp32 trains in fp32" if settings.precision != "fp32" else "",
        )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return fabric, settings


@dataclass
class TrainResult:
    """What a training run left in its folder."""

    out: Path
    epochs: int
    best_epoch: int | None
    best: dict = field(default_factory=dict)
    seconds: float = 0.0
    skipped: int = 0
    resumed: str | None = None
    stopped_early: bool = False
    ranks_in_sync: int | None = None
    rank: int = 0

    def summary(self) -> str:
        if self.rank != 0:
            return ""  # under DDP, one process speaks
        score = ", ".join(f"{k} {v:.4f}" for k, v in self.best.items() if isinstance(v, float))
        early = " (stopped early)" if self.stopped_early else ""
        if self.ranks_in_sync:
            early += f" on {self.ranks_in_sync} DDP processes (parameters identical on every rank)"
        return (
            f"trained {self.epochs} epoch(s){early} in {self.seconds:.1f} s; best epoch {self.best_epoch}"
            f"{': ' + score if score else ''} -> {self.out / 'best'} (use --model {self.out}); "
            f"{self.skipped} unreadable image(s) skipped; metrics -> {self.out / 'metrics.csv'}"
        )


def guarded_options(cfg) -> dict:
    """The options that define what a run computes: a rerun may only continue when they are unchanged."""
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNGUARDED}


def read_last(out: Path, cfg) -> dict | None:
    """The checkpoint to continue from, or None for a fresh start; refuses one made with other options.

    Raises:
        PictagError: the options that define the run changed since last.ckpt (they are named).
    """
    path = out / LAST
    if cfg.fresh or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a truncated or foreign file: say which and how to go on
        raise PictagError(f"{path} cannot be read ({str(exc).splitlines()[0]}): rerun with --fresh") from None
    saved, now = state.get("config", {}), guarded_options(cfg)
    # RUN/config.yaml names the values the run chose for unset options: `--config RUN/config.yaml` continues too.
    chosen = state.get("resolved_config", {})
    changed = [k for k in now if k in saved and now[k] not in (saved[k], chosen.get(k, saved[k]))]
    if changed:
        names = ", ".join(f"--{k.replace('_', '-')} (was {saved[k]!r}, now {now[k]!r})" for k in changed)
        raise PictagError(
            f"cannot continue {out}: {names} changed since {LAST}; use the same options, or --fresh to start over"
        )
    return state


def check_classes(state: dict | None, classes: list[str], out: Path) -> None:
    """Refuse to continue from `state` (`read_last`) when the data's classes changed since it was saved: the head
    it holds scores other classes.

    Raises:
        PictagError: classes were added, removed or reordered (they are named).
    """
    saved = None if state is None else state.get("classes")
    if saved is None or list(saved) == list(classes):
        return
    changes = [
        (what, sorted(names))
        for what, names in (("new", set(classes) - set(saved)), ("gone", set(saved) - set(classes)))
    ]
    change = "; ".join(
        f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" for what, names in changes if names
    )
    raise PictagError(
        f"cannot continue {out}: the data's classes changed since {LAST} ({change or 'reordered'}); train on the "
        "same classes, or use --fresh to start over"
    )


class Engine:
    """Trains a task on its data; see the module docstring.

    Args:
        fabric: A launched `lightning.fabric.Fabric`.
        task: The task, built (head initialised), on any device.
        data: Its training and validation images.
        cfg: The `TrainConfig`.
        settings: Precision, workers and accumulation chosen for this machine.
        resume: The checkpoint to continue from (`read_last`), or None.
    """

    def __init__(self, fabric, task: Task, data, cfg, settings: Settings, resume: dict | None = None):
        self.fabric, self.task, self.data, self.cfg, self.settings = fabric, task, data, cfg, settings
        self.out = Path(cfg.out)
        self.resume = resume
        self.rank, self.world = fabric.global_rank, fabric.world_size
        self.watch = cfg.early_stop  # the task's own metric when not given (`pictag.train.run.resolve_defaults`)
        self.higher_is_better = self.watch != "val_loss"
        self.history: list[dict] = []
        self.early = {"best": None, "best_epoch": None, "bad": 0, "stopped": False}
        self.partial = [0.0, 0]  # (loss sum, images) of the epoch before a mid-epoch checkpoint, all ranks
        self.skipped: set[str] = {key for key, _ in data.skipped}  # unreadable keys, each counted once
        self.best_confusion: tuple[torch.Tensor, int] | None = None  # (confusion matrix, epoch) of best/
        self.head_losses: dict[str, float] = {}  # the epoch's loss of each other head (fusion's --ablate)
        self.head_stage: dict | None = None  # what the head stage chose (`_fit_head`), recorded with the run
        # What this run used where an option left the choice open: config.yaml and best/pictag.json get it (`record`).
        self.resolved: dict = {}
        self.best_written: int | None = None  # the epoch best/ holds

    # ----- set-up

    def _trainable(self) -> tuple[set[int], set[int]]:
        """(ids of parameters trained after the frozen epochs, ids of the head groups' parameters)."""
        task, cfg = self.task, self.cfg
        groups = task.param_groups()
        if cfg.unfreeze_blocks is not None and not task.cached:  # a cached backbone never trains
            from pictag.train.blocks import unfreeze_last_blocks

            unfreeze_last_blocks(task.encoder.module, cfg.unfreeze_blocks)
        head = {id(p) for name in task.head_groups for p in groups.get(name, [])}
        return {id(p) for ps in groups.values() for p in ps if p.requires_grad or id(p) in head}, head

    def _set_phase(self, epoch: int) -> None:
        frozen = epoch < self.cfg.freeze_epochs
        for p in self.task.parameters():
            p.requires_grad_(id(p) in (self.head_ids if frozen else self.trainable))
        self.task.set_epoch(epoch, frozen)

    def _train_mode(self) -> None:
        self.model.train()
        for m in self.task.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                own = list(m.parameters(recurse=False))
                frozen = not any(p.requires_grad for p in own)
                pretrained = not any(id(p) in self.head_ids for p in own)  # a head's norm (arcface's neck) learns
                if frozen or (self.task.freeze_norm_stats and pretrained):
                    m.eval()  # running statistics stay as pretrained

    def _train_data(self):
        """The training sampler and dataset; the sampler's own batch size (P×K) replaces --batch-size."""
        cfg = self.cfg
        preprocess = self.task.encoder.preprocess
        self.transform = preprocess.train_transform(**self.task.augment)
        self.sampler = self.task.train_sampler(self.data.train.labels, cfg.seed, self.rank, self.world)
        if self.sampler is None:
            self.sampler = train_data.EpochSampler(
                self.data.train.labels, cfg.seed, balance=cfg.balance, rank=self.rank, world=self.world
            )
        self.train_batch = getattr(self.sampler, "batch_size", cfg.batch_size)
        dataset = self.task.dataset(
            self.data.train, self.transform, train=True, seed=cfg.seed, max_pixels=cfg.max_pixels
        )
        if dataset is None:
            dataset = train_data.split_images(self.data.train, self.transform, preprocess, cfg.seed, cfg.max_pixels)
        self.train_set = dataset

    def _loaders(self):
        cfg, s = self.cfg, self.settings
        preprocess = self.task.encoder.preprocess
        per_rank = len(self.sampler)
        self.train_loader = train_data.loader(
            self.data.train,
            self.transform,
            preprocess,
            self.sampler,
            batch_size=self.train_batch,
            workers=s.workers,
            seed=cfg.seed,
            drop_last=per_rank > self.train_batch,
            pin_memory=self.fabric.device.type == "cuda",
            max_pixels=cfg.max_pixels,
            dataset=self.train_set,
        )
        self.val_loader = None
        if self.data.val is not None:
            self.val_sampler = train_data.EpochSampler(
                self.data.val.labels, cfg.seed, shuffle=False, rank=self.rank, world=self.world
            )
            self.val_loader = train_data.loader(
                self.data.val,
                preprocess.crop,
                preprocess,
                self.val_sampler,
                batch_size=cfg.batch_size,
                workers=s.workers,
                seed=cfg.seed,
                drop_last=False,
                max_pixels=cfg.max_pixels,
                dataset=self.task.dataset(
                    self.data.val, preprocess.crop, train=False, seed=cfg.seed, max_pixels=cfg.max_pixels
                ),
            )

    def _fit_memory(self, batch: int):
        """How a training batch of `batch` images runs (`pictag.train.memory.Fit`): measured by probe steps before
        the first step through the backbone; a continued run keeps its first run's."""
        from pictag.train.memory import Fit, fit_batch, measurable

        device = self.fabric.device
        if self.resume is not None:  # checkpoints from before the memory check ran the batch whole
            return Fit(**self.resume.get("batching", {"micro_batch": batch, "accumulate": 1}))
        if not self.trainable - self.head_ids or not measurable(device):
            return Fit(batch, 1)  # only heads train (on cached features, or a frozen backbone): small steps
        size = self.task.encoder.preprocess.size
        positions = self.sampler.share()[: min(4, batch)]
        items = [self.train_set[(i, 0)] for i in positions]
        trainable = [p for p in self.task.parameters() if id(p) in self.trainable]

        def probe(n: int) -> None:
            found = train_data.collate(items[:n], size)
            loss, _ = self.model(self.fabric.to_device({k: v for k, v in found.items() if k != "errors"}))
            self.fabric.backward(loss)
            self.optimizer.zero_grad(set_to_none=True)

        buffers = [b.detach().clone() for b in self.task.buffers()]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for p in self.task.parameters():
                p.requires_grad_(id(p) in self.trainable)
            self._train_mode()
            # AdamW's two moments per trained weight are allocated by the first optimiser step, not by a probe.
            state = sum(2 * p.numel() * p.element_size() for p in trainable)
            local = torchrun_world()[0] if torchrun_world() else 1  # ranks of a node share its RAM
            available = None
            if device.type == "cpu" and local > 1:
                from pictag.train.memory import available_bytes

                available = available_bytes(device) // local
            fit = fit_batch(probe, batch, device, extra_bytes=state, available=available)
        with torch.no_grad():
            for b, saved in zip(self.task.buffers(), buffers, strict=True):
                b.copy_(saved)  # the probes' batch-norm statistics are not training's
        if self.world > 1:  # every rank runs the same passes: the smallest micro-batch of any rank
            smallest = torch.tensor(fit.micro_batch, device=device)
            micro = int(self.fabric.all_reduce(smallest, reduce_op=torch.distributed.ReduceOp.MIN).item())
            fit = Fit(micro, batch // micro, fit.step_bytes, fit.available_bytes)
        return fit

    def _chosen(self, param_groups: list[dict]) -> dict:
        """The values this run uses where options leave the choice to pictag (see `record`)."""
        lr: dict[str, float] = {}
        decay: dict[str, float] = {}
        for g in param_groups:  # with layer decay, a group's rate is its last block's
            lr[g["group"]] = max(lr.get(g["group"], 0.0), g["base_lr"])
            decay[g["group"]] = max(decay.get(g["group"], 0.0), g["weight_decay"])
        chosen = {
            "device": str(self.fabric.device),
            "precision": self.settings.precision,
            "workers": self.settings.workers,
            "accumulate": self.settings.accumulate,
            "train_batch": self.train_batch * self.fit_memory.accumulate,
            "memory": self.fit_memory.record(),
            "lr": lr,
            "weight_decay": decay,
        }
        height, width = self.task.encoder.preprocess.size
        if height == width:
            chosen["image_size"] = height
        if hasattr(self.sampler, "p"):  # P×K batches
            chosen.update(classes_per_batch=self.sampler.p, samples_per_class=self.sampler.k)
        return chosen

    def record(self, **values) -> None:
        """Record values this run chose (device, precision, batches, learning rates, swept values, ...): the options
        among them replace the unset ones in RUN/config.yaml, and all of them go to best/pictag.json's "training"."""
        self.resolved.update(values)
        if self.rank == 0:
            from pictag.config import dump_config

            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(resolved_config(self.cfg, self.resolved), self.out / "config.yaml")

    def _batches_per_epoch(self) -> int:
        n, b = len(self.sampler.share()), self.train_batch
        return n // b if n > b else 1

    # ----- the head stage (LP-FT)

    def _fit_head(self) -> dict | None:
        """Train the head on cached frozen features before any other step (`pictag.train.head_stage`); returns
        what its sweep chose, or None for a task without a head stage."""
        from pictag.train.head_stage import fit_head

        started = time.perf_counter()
        found = self.task.head_features(self.data, self.cfg)
        if found is None:
            return None
        device = self.fabric.device
        features, labels = (tensor.to(device) for tensor in found)
        self.task.to(device)
        # Its own random draws: the steps that follow start from the same random state as without it.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            swept = fit_head(self.task, features, labels, self.cfg)
        with torch.no_grad():
            self.task.eval()
            _, logs = self.task.head_step(features, labels)
        record = {
            **swept.record(),
            "images": len(labels),
            # the loss of each head on the cached training features: fusion's --ablate heads have their own
            **{f"train_{k}": float(v) for k, v in logs.items() if k == "loss" or k.endswith("_loss")},
            "seconds": round(time.perf_counter() - started, 2),
        }
        if self.rank == 0:
            tqdm.write(f"head stage on {len(labels)} cached training images: {swept.describe()}")
        return record

    def _after_head_stage(self, lrs: dict, decays: dict) -> None:
        """The head's rates after the head stage, where --lr / --weight-decay leave them unset: with the backbone
        (LP-FT) the whole model fine-tunes at the backbone's rate; with frozen towers the head goes on at a tenth
        of the rate the sweep chose, with its weight decay.

        The head stage's cosine ends at rate 0 on a fitted head: starting over at its peak rate undoes the fit
        (a fusion head on fashion-products fell from 0.950 to 0.903 validation top-1 in the first epoch at the swept
        1e-2), where a tenth of it goes on improving it (0.967 after one epoch, 0.972 after three)."""
        frozen = not (self.trainable - self.head_ids)
        others = [v for name, v in lrs.items() if name not in self.task.head_groups and v is not None]
        for name in self.task.head_groups:
            if lrs.get(name, 0) is None:
                lrs[name] = self.head_stage["lr"] / 10 if frozen else (others[0] if others else DEFAULT_BACKBONE_LR)
            if decays.get(name, 0) is None:
                decays[name] = self.head_stage["weight_decay"]

    def _validate_head_stage(self, step: int) -> None:
        """Validate the head stage's model as epoch 0, before any backbone step: best/ starts from the linear
        probe's model, so a fine-tuning that only loses on validation never replaces it (an epoch that ties with it
        does), and the curves show what fine-tuning adds to the probe."""
        if self.val_loader is None:
            return
        started = time.perf_counter()
        metrics, predictions = self._validate()
        row = {"epoch": 0, **{k: v for k, v in self.head_stage.items() if k.startswith("train_")}, **metrics}
        improved = self._early_stop(row.get(self.watch), -1)
        row.update(seconds=round(time.perf_counter() - started, 3), skipped=len(self.skipped))
        self.history.append(row)
        if improved:
            self._save_best(row, predictions)
        self._log_epoch(row, step)

    # ----- the loop

    def fit(self) -> TrainResult:
        started = time.perf_counter()
        fabric, cfg, task = self.fabric, self.cfg, self.task
        self.trainable, self.head_ids = self._trainable()
        groups = task.param_groups()
        depth = block_depths(task.encoder.module) if cfg.layer_decay else None
        names = list(groups)
        lrs, decays = per_group(cfg.lr, names, "--lr"), per_group(cfg.weight_decay, names, "--weight-decay")
        if self.resume is not None:
            self.head_stage = self.resume.get("head_stage")
        elif (cfg.freeze_epochs == 0 or task.cached) and not cfg.init_from:
            self.head_stage = self._fit_head()
        if self.head_stage is not None:
            self._after_head_stage(lrs, decays)
        param_groups = optimizer_groups(groups, lrs, decays, depth=depth, layer_decay=cfg.layer_decay)
        # Every group from the start: trainable later or not, so phases and resume never change the groups.
        optimizer = torch.optim.AdamW(param_groups)
        self.model, self.optimizer = fabric.setup(task, optimizer)
        self._train_data()
        self.fit_memory = self._fit_memory(self.train_batch)
        self.train_batch = self.fit_memory.micro_batch
        self.accumulate = self.settings.accumulate * self.fit_memory.accumulate
        self._loaders()
        batches = self._batches_per_epoch()
        steps_per_epoch = -(-batches // self.accumulate)
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        if cfg.warmup_ratio is not None:  # a fraction of all steps, as transformers' schedules
            warmup = round(cfg.warmup_ratio * cfg.epochs * steps_per_epoch)
        self.schedule = Schedule(
            cfg.schedule,
            warmup,
            cfg.epochs * steps_per_epoch,
            cfg.patience or 2,
            t0=round(cfg.t0 * steps_per_epoch),
            t_mult=cfg.t_mult,
        )
        self.ema = EMA(task, cfg.ema) if cfg.ema else None
        self.starts = {name: (0 if name in task.head_groups else cfg.freeze_epochs * steps_per_epoch) for name in names}
        epoch, batch_pos, step = 0, 0, 0
        resumed = None
        if self.resume is not None:
            epoch, batch_pos, step = self._load(self.resume)
            resumed = f"epoch {epoch + 1}, batch {batch_pos}" if batch_pos else f"epoch {epoch + 1}"
        self.record(**self._chosen(param_groups), **({"head_stage": self.head_stage} if self.head_stage else {}))
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.loggers = Loggers(
            parse_loggers(cfg.logger) if self.rank == 0 else [], self.out, (self.resume or {}).get("loggers")
        )
        if self.resume is None:
            self.loggers.log_hyperparams(guarded_options(cfg))
        # Plain lines where tqdm's bar is off: a log file, a pipe (one process speaks under DDP).
        self.progress = ProgressLines(cfg.log_every, on=self.rank == 0 and not sys.stderr.isatty())
        if self.head_stage is not None and self.resume is None:
            self._validate_head_stage(step)
        stop = self.early["stopped"]
        while epoch < cfg.epochs and not stop:
            epoch_started = time.perf_counter()
            self._set_phase(epoch)
            self._train_mode()
            loss_sum, seen, step = self._train_epoch(epoch, batch_pos, step, batches)
            trained = time.perf_counter() - epoch_started  # img/s is training's; seconds include validation
            batch_pos = 0
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), **self.head_losses}
            metrics, predictions = self._validate()
            row.update(metrics)
            if self.val_loader is not None and self.watch not in row:
                raise PictagError(
                    f"--early-stop {self.watch}: the {task.name} task reports {', '.join(sorted(metrics))}; "
                    "watch one of those"
                )
            watched = row.get(self.watch)
            improved = self._early_stop(watched, epoch)
            self.schedule.epoch_end(watched, self.higher_is_better)
            seconds = time.perf_counter() - epoch_started
            row.update(self._rates(), seconds=round(seconds, 3), img_s=round(seen / trained, 2))
            row["skipped"] = len(self.skipped)
            self.history.append(row)
            epoch += 1
            stop = self.early["stopped"]
            if improved:
                self._save_best(row, predictions)
            self._save(epoch, 0, step)
            self._log_epoch(row, step)
        self.loggers.finalize("success")
        if self.rank == 0:
            _write_metrics(self.history, self.out / "metrics.csv")
            from pictag.eval.plots import plot_training_curves

            if self.history:
                plot_training_curves(self.history, self.out / "curves.png", self.watch, self._phase_marks())
            if self.best_confusion is not None:
                from pictag.eval.plots import plot_confusion

                confusion, best_epoch = self.best_confusion
                plot_confusion(confusion.numpy(), self.data.classes, self.out / "confusion.png", f"epoch {best_epoch}")
        in_sync = self._check_ranks()
        best = next((r for r in self.history if r["epoch"] == self.early["best_epoch"]), {})
        return TrainResult(
            self.out,
            epoch,
            self.early["best_epoch"],
            {k: v for k, v in best.items() if k.startswith("val_")},
            time.perf_counter() - started,
            len(self.skipped),
            resumed,
            self.early["stopped"] and epoch < cfg.epochs,  # patience running out on the last epoch stops nothing
            in_sync,
            self.rank,
        )

    def _rates(self) -> dict[str, float]:
        """The learning rate of each task group, by name (with layer decay, a group's rate is its last block's)."""
        lrs: dict[str, float] = {}
        for g in self.optimizer.param_groups:
            lrs[f"lr_{g['group']}"] = max(lrs.get(f"lr_{g['group']}", 0.0), g["lr"])
        return dict(sorted(lrs.items()))

    def _phase_marks(self) -> list[tuple[float, str]]:
        """Where the curves change phase: after the --freeze-epochs, between two epochs."""
        frozen = self.cfg.freeze_epochs
        if self.history and self.history[0]["epoch"] == 0:
            return [(0.5, "after the head stage")]
        return [(frozen + 0.5, self.task.unfreeze_mark)] if 0 < frozen < self.cfg.epochs else []

    def _check_ranks(self) -> int | None:
        """Under DDP, check that every rank ends with the same weights; returns the number of ranks checked.

        Raises:
            PictagError: the ranks' parameters differ (a broken gradient synchronisation).
        """
        self.fabric.barrier()
        if self.world == 1:
            return None
        with torch.no_grad():
            digest = torch.stack([p.double().sum() for p in self.task.parameters()]).to(self.fabric.device)
        gathered = self.fabric.all_gather(digest)
        if not all(torch.equal(gathered[0], gathered[r]) for r in range(1, self.world)):
            raise PictagError(f"the {self.world} DDP processes ended with different weights: please report this")
        return self.world

    def _train_epoch(self, epoch: int, batch_pos: int, step: int, batches: int) -> tuple[float, int, int]:
        fabric, cfg, accumulate = self.fabric, self.cfg, self.accumulate
        self.sampler.set_epoch(epoch, batch_pos * self.train_batch)
        # A run continued mid-epoch starts from the sums saved with the checkpoint (counted once, on rank 0).
        loss_sum, seen = (self.partial[0], int(self.partial[1])) if self.rank == 0 and batch_pos else (0.0, 0)
        self.partial = [0.0, 0]
        bar = tqdm(
            total=batches,
            initial=batch_pos,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            dynamic_ncols=True,
            disable=None if self.rank == 0 else True,
            leave=False,
        )
        tick, images = time.perf_counter(), 0
        position = batch_pos
        head_sums: dict[str, float] = {}
        self.progress.start(epoch, cfg.epochs, batches, batch_pos)
        for batch in self.train_loader:
            if position >= batches:
                break
            for key, reason in batch["errors"]:
                if key not in self.skipped:
                    log.warning("%s skipped: %s", key, reason)
                    self.skipped.add(key)
            # Dropout and other random layers draw from the global generator: make it a function of the batch.
            torch.manual_seed(item_seed(cfg.seed + 7 * self.rank, epoch, position))
            last = (position + 1) % accumulate == 0 or position + 1 == batches
            batch = fabric.to_device({k: v for k, v in batch.items() if k != "errors"})
            with fabric.no_backward_sync(self.model, enabled=not last):
                logs = {}
                if len(batch["labels"]):
                    loss, logs = self.model(batch)
                else:  # every image unreadable: a zero loss still takes DDP's collective steps with the others
                    loss = sum(p.sum() for p in self.task.parameters() if p.requires_grad) * 0.0
                fabric.backward(loss / accumulate)
            n = len(batch["labels"])
            # train_loss is the task's own "loss"; other heads' losses (fusion's --ablate) are logged on their own.
            loss_sum += float(logs.get("loss", loss)) * n
            for name, value in logs.items():
                if name.endswith("_loss"):
                    head_sums[name] = head_sums.get(name, 0.0) + float(value) * n
            seen += n
            images += n
            position += 1
            rate = images * self.world / max(time.perf_counter() - tick, 1e-9)
            if last:
                self._stop_if_diverged(loss_sum, epoch, position)
                step = self._optimizer_step(step)
                self.loggers.log({"train/loss": float(logs.get("loss", loss)), **self._rates()}, step)
                self.progress.step(position, loss_sum / max(seen, 1), rate)
                if cfg.save_every and step % cfg.save_every == 0 and position < batches:
                    sums = torch.tensor([loss_sum, float(seen)], device=fabric.device)
                    totals = fabric.all_reduce(sums, reduce_op="sum")
                    self.partial = [totals[0].item(), int(totals[1].item())]
                    self._save(epoch, position, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
        bar.close()
        # Sum over ranks, so the logged loss is the whole epoch's.
        totals = fabric.all_reduce(torch.tensor([loss_sum, float(seen)], device=fabric.device), reduce_op="sum")
        names = sorted(head_sums)
        if names:
            sums = fabric.all_reduce(torch.tensor([head_sums[k] for k in names], device=fabric.device), reduce_op="sum")
            self.head_losses = {f"train_{k}": v / max(totals[1].item(), 1) for k, v in zip(names, sums.tolist())}
        return totals[0].item(), int(totals[1].item()), step

    def _stop_if_diverged(self, loss_sum: float, epoch: int, position: int) -> None:
        """The finite-loss guard, before each optimiser step: a nan or infinite loss on any rank (the epoch's sum
        stays non-finite once one batch was) stops the run before the step applies it, so that neither last.ckpt nor
        best/ ever holds what it would make.

        Raises:
            PictagError: the loss is not finite (naming the epoch and batch, and what best/ holds).
        """
        bad = not math.isfinite(loss_sum)
        if self.world > 1:  # every rank stops at the same step, or the others would wait in the next collective
            flag = torch.tensor(float(bad), device=self.fabric.device)
            bad = self.fabric.all_reduce(flag, reduce_op="sum").item() > 0
        if bad:
            self._diverged(f"the loss became {loss_sum} at epoch {epoch + 1}, batch {position}")

    def _stop_if_weights_diverged(self, epoch: int) -> None:
        """The guard's second half, before any save: a step that overflowed the weights leaves a finite loss behind.

        Raises:
            PictagError: a parameter holds nan or inf.
        """
        # Only what an optimiser step can change: a frozen backbone's check cost a second per save on a busy CPU.
        trained = ((name, p) for name, p in self.task.named_parameters() if id(p) in self.trainable)
        bad = next((name for name, p in trained if not torch.isfinite(p).all()), None)
        if bad is not None:
            self._diverged(f"the weights became non-finite ({bad}) in epoch {epoch}")

    def _diverged(self, what: str) -> None:
        if self.best_written is None:
            held = "no best/ was written"
        elif self.best_written == 0:
            held = "best/ holds epoch 0, the head stage's model"
        else:
            held = f"best/ holds epoch {self.best_written}"
        self.loggers.finalize("failed")
        raise PictagError(
            f"training diverged: {what}; stopped without saving it ({held}): lower --lr, or set --clip-grad 1.0"
        )

    def _optimizer_step(self, step: int) -> int:
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.schedule.factor(step, self.starts[group["group"]])
        if self.cfg.clip_grad:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.cfg.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return step + 1

    # ----- validation, early stopping

    @torch.no_grad()
    def _validate(self) -> tuple[dict, dict | None]:
        if self.val_loader is None:
            return {}, None
        if self.ema is not None:
            self.ema.swap()
        self.model.eval()
        outputs: dict[str, list[torch.Tensor]] = {}
        empty = None
        for batch in self.val_loader:
            self.skipped.update(key for key, _ in batch["errors"])
            batch = self.fabric.to_device({k: v for k, v in batch.items() if k != "errors"})
            if not len(batch["labels"]):
                empty = batch
                continue
            for key, value in {**self.model(batch, stage="val"), "index": batch["index"]}.items():
                outputs.setdefault(key, []).append(value)
        if not outputs and empty is not None:  # every image of this rank unreadable: shapes for the gather below
            outputs = {k: [v] for k, v in {**self.model(empty, stage="val"), "index": empty["index"]}.items()}
        if self.ema is not None:
            self.ema.swap()
        gathered = {key: _gather_rows(self.fabric, torch.cat(values)) for key, values in outputs.items()}
        if "index" in gathered:
            # The sampler pads the ranks' shares to equal length with repeated images: count each image once.
            keep = _first_occurrences(gathered["index"])
            gathered = {key: value[keep].cpu() for key, value in gathered.items()}
        return self.task.validation_metrics(gathered)

    def _early_stop(self, metric: float | None, epoch: int) -> bool:
        """Whether this epoch is the best so far (always, without validation); counts patience."""
        early = self.early
        if metric is None:
            early["best_epoch"] = epoch + 1
            return True
        better = early["best"] is None or (metric > early["best"] if self.higher_is_better else metric < early["best"])
        # The head stage's model (epoch 0) is the safety net, kept only while every trained epoch does worse: a small
        # validation set that saturates (45 COIL-100 views at Recall@1 1.000) would otherwise keep it over epochs
        # that tie with it there and do better on held-out objects (one-view Recall@1 0.919 at epoch 0, 0.955 at 8).
        better = better or (early["best_epoch"] == 0 and metric == early["best"])
        if better:
            early.update(best=metric, best_epoch=epoch + 1, bad=0)
            return True
        early["bad"] += 1
        if self.cfg.patience and early["bad"] >= self.cfg.patience:
            early["stopped"] = True
        return False

    # ----- outputs

    def _save_best(self, row: dict, predictions: dict | None) -> None:
        if self.ema is not None:
            self.ema.swap()
        try:
            self._stop_if_weights_diverged(row["epoch"])
            if self.rank == 0:
                metrics = {k: v for k, v in row.items() if k.startswith(("val_", "epoch"))}
                save_best(self.out / "best", self.task, {**metrics, **self.data.facts()}, self.resolved)
                if predictions is not None:
                    from pictag.eval.metrics import confusion_matrix, write_per_class

                    classes = self.data.classes
                    confusion = confusion_matrix(predictions["predicted"], predictions["labels"], len(classes))
                    write_per_class(confusion, classes, self.out / "per_class.csv")
                    # Plotted once, when training ends: a plot of 30 classes takes longer than a cached epoch.
                    self.best_confusion = (confusion, row["epoch"])
                    self.task.after_best(self.out, predictions)
            self.best_written = row["epoch"]
        finally:
            if self.ema is not None:
                self.ema.swap()
        self.fabric.barrier()

    def _log_epoch(self, row: dict, step: int) -> None:
        self.loggers.log(row, step)  # at the step the epoch ended on: steps only grow (W&B drops the others)
        if self.rank != 0:
            return
        _write_metrics(self.history, self.out / "metrics.csv")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_")) and v is not None)
        if row["epoch"] == 0:
            tqdm.write(f"epoch 0 (the head stage's model): {shown} ({row['seconds']:.1f} s)")
        else:
            tqdm.write(f"epoch {row['epoch']}: {shown} ({row['seconds']:.1f} s, {row['img_s']:.1f} img/s)")

    # ----- checkpoints

    def _state(self, epoch: int, batch_pos: int, step: int) -> dict:
        np_state = np.random.get_state()
        return {
            "task": self.task,
            "optimizer": self.optimizer,
            "schedule": self.schedule.state_dict(),
            "precision": self.fabric.strategy.precision.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch,
            "batch": batch_pos,
            "partial": list(self.partial) if batch_pos else [0.0, 0],
            "step": step,
            "early": dict(self.early),
            "best_confusion": self.best_confusion,
            "head_stage": self.head_stage,
            "history": self.history,
            "skipped": sorted(self.skipped),
            "config": guarded_options(self.cfg),
            "resolved_config": guarded_options(resolved_config(self.cfg, self.resolved)),
            "batching": {"micro_batch": self.train_batch, "accumulate": self.fit_memory.accumulate},
            "loggers": self.loggers.ids(),
            "classes": list(self.data.classes),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "python": _python_state(random.getstate()),
                "sampler": {"seed": self.cfg.seed, "epoch": epoch, "start": batch_pos * self.train_batch},
            },
        }

    def _save(self, epoch: int, batch_pos: int, step: int) -> None:
        self._stop_if_weights_diverged(epoch + (batch_pos > 0))
        path = self.out / LAST
        tmp = path.with_name(f".{LAST}.tmp")
        self.fabric.save(tmp, self._state(epoch, batch_pos, step))
        if self.rank == 0:
            commit(tmp, path)
        self.fabric.barrier()

    def _load(self, state: dict) -> tuple[int, int, int]:
        try:
            self.task.load_state_dict(state["task"])
        except RuntimeError as exc:  # a checkpoint older than its class list (`check_classes`), or another model
            detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
            raise PictagError(
                f"cannot continue {self.out}: its {LAST} does not fit this model ({detail}); use --fresh"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state.get("precision"):
            self.fabric.strategy.precision.load_state_dict(state["precision"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.early = dict(state["early"])
        self.best_written = self.early["best_epoch"]
        best = state.get("best_confusion")
        self.best_confusion = (best[0], int(best[1])) if best is not None else None
        self.history = list(state["history"])
        self.head_stage = state.get("head_stage")
        self.skipped = set(state["skipped"])
        self.partial = list(state.get("partial", [0.0, 0]))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        return state["epoch"], state["batch"], state["step"]


def save_best(folder: Path, task: Task, metrics: dict, training: dict | None = None) -> Path:
    """Write the task's inference model (fp32 safetensors and pictag.json) through the run-directory format."""
    from pictag.models.run_dir import save_run_model

    encoder, head = task.inference_model()
    return save_run_model(
        folder, encoder, head, task=task.name, classes=task.classes(), metrics=metrics, training=training
    )


def resolved_config(cfg, resolved: dict):
    """`cfg` with the unset options that `resolved` gives a value replaced by it; learning rates and weight decays
    per group are written as --lr takes them ("backbone=0.0001,head=0.001")."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cfg)}
    values = {}
    for key, value in resolved.items():
        if key in names and getattr(cfg, key) is None:
            values[key] = ",".join(f"{k}={v:g}" for k, v in value.items()) if isinstance(value, dict) else value
    return dataclasses.replace(cfg, **values)


def _python_state(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _gather_rows(fabric, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (ranks may hold different numbers of rows)."""
    if fabric.world_size == 1:
        return rows
    counts = fabric.all_gather(torch.tensor(len(rows), device=rows.device)).flatten().tolist()
    padded = torch.zeros(max(counts), *rows.shape[1:], dtype=rows.dtype, device=rows.device)
    padded[: len(rows)] = rows
    gathered = fabric.all_gather(padded)
    return torch.cat([gathered[r, :n] for r, n in enumerate(counts)])


def _first_occurrences(index: torch.Tensor) -> torch.Tensor:
    seen, keep = set(), []
    for i, value in enumerate(index.tolist()):
        if value not in seen:
            seen.add(value)
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


def _write_metrics(history: list[dict], path: Path) -> None:
    if not history:
        return
    names = list(dict.fromkeys(k for row in history for k in row))
    with atomic_file(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(history)
