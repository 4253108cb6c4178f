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
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pictag.errors import PictagError
from pictag.train import data as train_data
from pictag.train.optim import DEFAULT_BACKBONE_LR, EMA, Schedule, block_depths, optimizer_groups, per_group
from pictag.train.task import Task

log = logging.getLogger(__name__)

LAST = "last.ckpt"
# Options that do not change what is computed: a rerun may change them and still continue.
UNGUARDED = ("out", "workers", "fresh", "save_every", "device", "max_pixels")


@dataclass(frozen=True)
class Settings:
    """What was chosen for this machine (each from an option when given): see `choose_settings`."""

    precision: str  # Fabric's: "32-true", "bf16-mixed", "16-mixed"
    workers: int
    accumulate: int


def torchrun_world() -> tuple[int, int] | None:
    """(processes per node, nodes) when started by torchrun, else None."""
    if "LOCAL_WORLD_SIZE" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    local = int(os.environ["LOCAL_WORLD_SIZE"])
    return local, max(int(os.environ["WORLD_SIZE"]) // local, 1)


def choose_settings(cfg, device: torch.device) -> Settings:
    """Precision, data workers and accumulation for this device, each overridden by its option when given.

    bf16 on Ampere and newer, fp16 with a gradient scaler before, fp32 on CPU; workers and accumulation from the
    GPU's memory (80 GB: 16 workers, 1 batch per step; 40 GB: 8, 2; less: 4, 4); on CPU half the cores decode.
    """
    from pictag.device import default_workers

    workers, accumulate = default_workers(device), 1
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        workers, accumulate = (16, 1) if memory >= 70 else (8, 2) if memory >= 35 else (4, 4)
        workers = min(workers, len(os.sched_getaffinity(0)))
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        precision = "fp16" if device.type == "mps" else "fp32"
    # auto is the trainer's own choice above (fp32 on CPU: frozen blocks would take bf16's slow path there).
    precision = precision if cfg.precision in (None, "auto") else cfg.precision
    fabric_precision = {"fp32": "32-true", "tf32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}[precision]
    return Settings(
        fabric_precision,
        workers if cfg.workers is None else cfg.workers,
        accumulate if cfg.accumulate is None else cfg.accumulate,
    )


def make_fabric(cfg):
    """A launched Fabric: one device, or DDP over torchrun's processes (NCCL on GPUs, gloo on CPU)."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    from pictag.device import resolve_device

    device, _ = resolve_device(cfg.device, None)
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
    fabric = Fabric(precision=settings.precision, **kwargs)
    fabric.launch()
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
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    if changed:
        names = ", ".join(f"--{k.replace('_', '-')} (was {saved[k]!r}, now {now[k]!r})" for k in changed)
        raise PictagError(
            f"cannot continue {out}: {names} changed since {LAST}; use the same options, or --fresh to start over"
        )
    return state


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
        self.head_stage: dict | None = None  # what the head stage chose (`_fit_head`), kept in best/pictag.json

    # ----- set-up

    def _trainable(self) -> tuple[set[int], set[int]]:
        """(ids of parameters trained after the frozen epochs, ids of the head groups' parameters)."""
        task, cfg = self.task, self.cfg
        groups = task.param_groups()
        if cfg.unfreeze_blocks is not None:
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
                own = [p for p in m.parameters(recurse=False)]
                frozen = not any(p.requires_grad for p in own)
                pretrained = not any(id(p) in self.head_ids for p in own)  # a head's norm (arcface's neck) learns
                if frozen or (self.task.freeze_norm_stats and pretrained):
                    m.eval()  # running statistics stay as pretrained

    def _loaders(self):
        cfg, s = self.cfg, self.settings
        preprocess = self.task.encoder.preprocess
        transform = preprocess.train_transform(**self.task.augment)
        self.sampler = self.task.train_sampler(self.data.train.labels, cfg.seed, self.rank, self.world)
        if self.sampler is None:
            self.sampler = train_data.EpochSampler(
                self.data.train.labels, cfg.seed, balance=cfg.balance, rank=self.rank, world=self.world
            )
        # A task's own sampler (P×K) fixes the batch size; --batch-size is then validation's.
        self.train_batch = getattr(self.sampler, "batch_size", cfg.batch_size)
        per_rank = len(self.sampler)
        self.train_loader = train_data.loader(
            self.data.train,
            transform,
            transform.min_decode_size,
            preprocess.size,
            self.sampler,
            batch_size=self.train_batch,
            workers=s.workers,
            seed=cfg.seed,
            drop_last=per_rank > self.train_batch,
            pin_memory=self.fabric.device.type == "cuda",
            max_pixels=cfg.max_pixels,
            dataset=self.task.dataset(self.data.train, transform, train=True, seed=cfg.seed, max_pixels=cfg.max_pixels),
        )
        self.val_loader = None
        if self.data.val is not None:
            self.val_sampler = train_data.EpochSampler(
                self.data.val.labels, cfg.seed, shuffle=False, rank=self.rank, world=self.world
            )
            self.val_loader = train_data.loader(
                self.data.val,
                preprocess.crop,
                preprocess.min_decode_size,
                preprocess.size,
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
        features, labels = found
        device = self.fabric.device
        self.task.to(device)
        # Its own random draws: the steps that follow start from the same random state as without it.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            swept = fit_head(self.task, features.to(device), labels.to(device), self.cfg)
        record = {**swept.record(), "images": len(labels), "seconds": round(time.perf_counter() - started, 2)}
        if self.rank == 0:
            tqdm.write(f"head stage on {len(labels)} cached training images: {swept.describe()}")
            config = self.out / "config.yaml"  # `pictag train` wrote it: the choice goes beside the options, as a
            if config.is_file():  # comment, for it is not an option
                with open(config, "a") as f:
                    f.write(f"# head stage (swept, then fitted on the cached features): {record}\n")
        return record

    def _after_head_stage(self, lrs: dict, decays: dict) -> None:
        """The head's rates after the head stage, where --lr / --weight-decay leave them unset: with the backbone
        (LP-FT) the whole model fine-tunes at the backbone's rate; with frozen towers the head goes on with what the
        sweep chose."""
        frozen = not (self.trainable - self.head_ids)
        others = [v for name, v in lrs.items() if name not in self.task.head_groups and v is not None]
        for name in self.task.head_groups:
            if lrs.get(name, 0) is None:
                lrs[name] = self.head_stage["lr"] if frozen else (others[0] if others else DEFAULT_BACKBONE_LR)
            if decays.get(name, 0) is None:
                decays[name] = self.head_stage["weight_decay"]

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
        elif cfg.freeze_epochs == 0 and not cfg.init_from:
            self.head_stage = self._fit_head()
        if self.head_stage is not None:
            self._after_head_stage(lrs, decays)
        param_groups = optimizer_groups(groups, lrs, decays, depth=depth, layer_decay=cfg.layer_decay)
        # Every group from the start: trainable later or not, so phases and resume never change the groups.
        optimizer = torch.optim.AdamW(param_groups)
        self._loaders()
        self.model, self.optimizer = fabric.setup(task, optimizer)
        batches = self._batches_per_epoch()
        steps_per_epoch = -(-batches // self.settings.accumulate)
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
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            self.writer = _tensorboard(self.out / "tb")
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
            lrs: dict[str, float] = {}
            for g in self.optimizer.param_groups:  # with layer decay, a group's rate is its last block's
                lrs[f"lr_{g['group']}"] = max(lrs.get(f"lr_{g['group']}", 0.0), g["lr"])
            row.update(dict(sorted(lrs.items())), seconds=round(seconds, 3), img_s=round(seen / trained, 2))
            row["skipped"] = len(self.skipped)
            self.history.append(row)
            epoch += 1
            stop = self.early["stopped"]
            if improved:
                self._save_best(row, predictions)
            self._save(epoch, 0, step)
            self._log_epoch(row)
        if self.rank == 0:
            self.writer.close()
            _write_metrics(self.history, self.out / "metrics.csv")
            from pictag.eval.plots import plot_training_curves

            if self.history:
                plot_training_curves(self.history, self.out / "curves.png")
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
        fabric, cfg, accumulate = self.fabric, self.cfg, self.settings.accumulate
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
        for batch in self.train_loader:
            if position >= batches:
                break
            for key, reason in batch["errors"]:
                if key not in self.skipped:
                    log.warning("%s skipped: %s", key, reason)
                    self.skipped.add(key)
            # Dropout and other random layers draw from the global generator: make it a function of the batch.
            torch.manual_seed(train_data.item_seed(cfg.seed + 7 * self.rank, epoch, position))
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
            if last:
                step = self._optimizer_step(step)
                if self.rank == 0:
                    self.writer.add_scalar("train/loss", loss.item(), step)
                if cfg.save_every and step % cfg.save_every == 0 and position < batches:
                    sums = torch.tensor([loss_sum, float(seen)], device=fabric.device)
                    totals = fabric.all_reduce(sums, reduce_op="sum")
                    self.partial = [totals[0].item(), int(totals[1].item())]
                    self._save(epoch, position, step)
            bar.update(1)
            elapsed = time.perf_counter() - tick
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{images * self.world / max(elapsed, 1e-9):.1f}")
        bar.close()
        # Sum over ranks, so the logged loss is the whole epoch's.
        totals = fabric.all_reduce(torch.tensor([loss_sum, float(seen)], device=fabric.device), reduce_op="sum")
        names = sorted(head_sums)
        if names:
            sums = fabric.all_reduce(torch.tensor([head_sums[k] for k in names], device=fabric.device), reduce_op="sum")
            self.head_losses = {f"train_{k}": v / max(totals[1].item(), 1) for k, v in zip(names, sums.tolist())}
        return totals[0].item(), int(totals[1].item()), step

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
            if self.rank == 0:
                metrics = {k: v for k, v in row.items() if k.startswith(("val_", "epoch"))}
                stage = {"head_stage": self.head_stage} if self.head_stage else {}
                save_best(self.out / "best", self.task, {**metrics, **stage, **self.data.facts()})
                if predictions is not None:
                    from pictag.eval.metrics import confusion_matrix, write_per_class

                    classes = self.data.classes
                    confusion = confusion_matrix(predictions["predicted"], predictions["labels"], len(classes))
                    write_per_class(confusion, classes, self.out / "per_class.csv")
                    # Plotted once, when training ends: a plot of 30 classes takes longer than a cached epoch.
                    self.best_confusion = (confusion, row["epoch"])
                    self.task.after_best(self.out, predictions)
        finally:
            if self.ema is not None:
                self.ema.swap()
        self.fabric.barrier()

    def _log_epoch(self, row: dict) -> None:
        if self.rank != 0:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        self.writer.flush()
        _write_metrics(self.history, self.out / "metrics.csv")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_")) and v is not None)
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
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "python": _python_state(random.getstate()),
                "sampler": {"seed": self.cfg.seed, "epoch": epoch, "start": batch_pos * self.train_batch},
            },
        }

    def _save(self, epoch: int, batch_pos: int, step: int) -> None:
        path = self.out / LAST
        tmp = path.with_name(f".{LAST}.tmp")
        self.fabric.save(tmp, self._state(epoch, batch_pos, step))
        if self.rank == 0:
            os.replace(tmp, path)
        self.fabric.barrier()

    def _load(self, state: dict) -> tuple[int, int, int]:
        self.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state.get("precision"):
            self.fabric.strategy.precision.load_state_dict(state["precision"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.early = dict(state["early"])
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


def save_best(folder: Path, task: Task, metrics: dict) -> Path:
    """Write the task's inference model (fp32 safetensors and pictag.json) through the run-directory format."""
    from pictag.models.run_dir import save_run_model

    encoder, head = task.inference_model()
    return save_run_model(folder, encoder, head, task=task.name, classes=task.classes(), metrics=metrics)


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


def _tensorboard(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder))


def _write_metrics(history: list[dict], path: Path) -> None:
    if not history:
        return
    names = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)
