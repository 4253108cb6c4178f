"""The optimiser side of training: AdamW over named parameter groups, the learning-rate schedule, and EMA.

Every group exists from the first step, so resume and phases never meet a group that appeared mid-run. A task's
group ("backbone", "head", ...) becomes up to two optimiser groups per depth: one with weight decay, one without
(norms, biases, scales: every parameter of one dimension or less), as timm and open_clip do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pictag.errors import PictagError

# What a group not named in --lr starts at: heads learn from scratch, backbones only adjust.
DEFAULT_LR = {"head": 1e-3}
DEFAULT_BACKBONE_LR = 1e-4


def per_group(text: str | float | None, groups: Sequence[str], option: str) -> dict[str, float | None]:
    """Parse "1e-4" (every group) or "backbone=1e-5,head=3e-4" into {group: value}; unnamed groups get None.

    Raises:
        PictagError: a name that is not one of `groups` (they are listed), or a value that is not a number.
    """
    from pictag.config import group_values

    values: dict[str, float | None] = dict.fromkeys(groups)
    parsed = group_values(text, option, "(-inf, inf)")  # the option's own range is checked with its group
    if None in parsed:
        return dict.fromkeys(groups, parsed[None])
    for name, value in parsed.items():
        if name not in values:
            raise PictagError(
                f"{option} names group {name!r}, but this task's parameter groups are {', '.join(groups)}: "
                f"e.g. {option} {groups[0]}=1e-4"
            )
        values[name] = value
    return values


def optimizer_groups(
    groups: dict[str, list[torch.nn.Parameter]],
    lr: dict[str, float | None],
    weight_decay: dict[str, float | None],
    *,
    depth: dict[int, tuple[int, int]] | None = None,
    layer_decay: float | None = None,
) -> list[dict]:
    """AdamW parameter groups: per task group, per depth (layer-wise decay) and with or without weight decay.

    Args:
        groups: The task's parameter groups.
        lr: Learning rate per group (None: 1e-3 for "head", 1e-4 for the others).
        weight_decay: Weight decay per group (None: 0.05).
        depth: id(parameter) → (depth, max depth) of backbone parameters in the image tower, 0 = the last block.
        layer_decay: Each depth step multiplies the learning rate by this.

    Returns:
        Groups with "params", "group" (the task group's name), "base_lr", "lr" and "weight_decay".
    """
    out: dict[tuple, dict] = {}
    for name, params in groups.items():
        base = lr.get(name)
        base = DEFAULT_LR.get(name, DEFAULT_BACKBONE_LR) if base is None else base
        decay = weight_decay.get(name)
        decay = 0.05 if decay is None else decay
        for p in params:
            level = depth.get(id(p), (0, 0))[0] if depth and layer_decay else 0
            no_decay = p.ndim <= 1
            key = (name, level, no_decay)
            if key not in out:
                scaled = base * (layer_decay**level if layer_decay else 1.0)
                out[key] = {
                    "params": [],
                    "group": name,
                    "base_lr": scaled,
                    "lr": scaled,
                    "weight_decay": 0.0 if no_decay else decay,
                }
            out[key]["params"].append(p)
    return list(out.values())


def block_depths(module: torch.nn.Module) -> dict[int, tuple[int, int]]:
    """id(parameter) → (depth, deepest) in the image tower: 0 for the last block and what follows it, one more
    per block back, and the deepest for everything before the first block (stem, embeddings).

    Raises:
        PictagError: no known block layout (see `pictag.train.blocks`).
    """
    from pictag.train.blocks import image_blocks

    blocks, tail = image_blocks(module)
    deepest = len(blocks)
    depths = {id(p): (deepest, deepest) for p in module.parameters()}
    for i, block in enumerate(blocks):
        for p in block.parameters():
            depths[id(p)] = (len(blocks) - 1 - i, deepest)
    for p in tail:
        depths[id(p)] = (0, deepest)
    return depths


class Schedule:
    """Learning-rate multiplier per optimiser step: linear warmup, then cosine or linear decay, cosine with warm
    restarts, or plateau.

    Each group's schedule starts when the group starts training (after --freeze-epochs for the backbone), so a
    backbone unfrozen late still warms up. Plateau cuts the multiplier by 10 after `patience` epochs without
    improvement of the watched metric. Warm restarts (SGDR, Loshchilov and Hutter 2017, as torch's
    `CosineAnnealingWarmRestarts` with a minimum of 0) decay along a cosine over `t0` steps, restart at 1, and make
    each cycle `t_mult` times longer than the one before. `state_dict` holds what a resume needs (the plateau's
    progress).
    """

    def __init__(self, kind: str, warmup: int, total: int, patience: int = 2, t0: int = 1, t_mult: int = 1):
        self.kind, self.warmup, self.total, self.patience = kind, warmup, total, patience
        self.t0, self.t_mult = max(t0, 1), t_mult
        self.scale, self.best, self.bad = 1.0, None, 0

    def factor(self, step: int, start: int = 0) -> float:
        """Multiplier of the base learning rate at optimiser step `step` of a group that starts at `start`."""
        step -= start
        total = max(self.total - start, 1)
        warmup = min(self.warmup, total // 2)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.kind == "plateau":
            return self.scale
        if self.kind == "cosine-restarts":
            return 0.5 * (1 + math.cos(math.pi * self._cycle_progress(step - warmup)))
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1.0 - progress

    def _cycle_progress(self, step: int) -> float:
        """How far `step` is into its warm-restart cycle, from 0 to 1."""
        length = self.t0
        while step >= length:
            step -= length
            length *= self.t_mult
        return step / length

    def epoch_end(self, metric: float | None, higher_is_better: bool) -> None:
        """Let plateau see an epoch's metric."""
        if self.kind != "plateau" or metric is None:
            return
        if self.best is None or (metric > self.best if higher_is_better else metric < self.best):
            self.best, self.bad = metric, 0
            return
        self.bad += 1
        if self.bad >= self.patience:
            self.scale, self.bad = self.scale * 0.1, 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]


class EMA:
    """Exponential moving average of a module's floating-point parameters (buffers are the live model's)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in module.parameters() if p.is_floating_point()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live and the averaged weights (call again to swap back)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        for s, saved in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(saved)
