"""The head stage: a task's head trained to convergence on cached frozen features, before any backbone step.

This is the first half of LP-FT (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features"): a head
that starts random, or from class prototypes, sends large and wrong gradients into pretrained weights on the first
unfrozen steps; a head fitted first on the frozen features does not. Each training image is embedded once (its
eval crop, `pictag.train.features`), and the head trains on the cache: on CPU a few seconds, against an epoch of
backbone forward passes per head epoch through the images.

    found = fit_head(task, features, labels, cfg)    # swept lr x weight decay on inner folds, then fitted on all
    found.best                                       # {"lr": 0.01, "weight_decay": 0.0001}

The learning rate and weight decay are swept (`pictag.heads.sweep`) on stratified inner folds of the training
features, scored by the task's own validation metric (`Task.validation_metrics` of `Task.head_outputs`), and the
head is then fitted on every training feature with the chosen values.
"""

from __future__ import annotations

import logging
import math

import torch

from pictag.heads.sweep import Sweep, sweep
from pictag.train.optim import optimizer_groups

log = logging.getLogger(__name__)

# A linear head over L2-normalised features needs large weights to be as confident as a logistic regression: with
# 60 steps and rates up to 1e-2 the sweep always chose the grid's top rate, and the head stage's model fell short of
# scikit-learn's LogisticRegression on the same features (fashion-products' images, 30 classes: 0.867 against
# 0.883 validation top-1). With up to 200 steps and rates up to 1e-1 it passed it (0.900), and a fusion head gained
# two points (0.950 to 0.969 on fashion-products' first fold).
LRS = (3e-3, 1e-2, 3e-2, 1e-1)
WEIGHT_DECAYS = (1e-4, 1e-2)
DEFAULT = {"lr": 1e-2, "weight_decay": 1e-4}
# Steps of each fit, of up to BATCH rows: PASSES over the rows, within [MIN_STEPS, MAX_STEPS]. The sweep makes 25
# fits (8 candidates x 3 folds, then the chosen one on every row); a step costs about a millisecond for a linear
# head, so the stage stays at seconds for a classifier (a fusion MLP over 1,440 products: about 45 s). A few
# hundred rows fit in one batch, where 60 full-batch steps converge as well as 200 (hymenoptera, 245 images:
# 0.935 against 0.928 validation top-1, one image apart) at a third of the cost.
PASSES = 40
MIN_STEPS, MAX_STEPS = 60, 200
BATCH = 256


def head_parameters(task) -> list[torch.nn.Parameter]:
    groups = task.param_groups()
    return [p for name in task.head_groups for p in groups.get(name, [])]


def _head_state(task) -> dict[str, torch.Tensor]:
    """The head's parameters and the buffers of the modules that hold them (the arcface neck's BatchNorm)."""
    ids = {id(p) for p in head_parameters(task)}
    state = {}
    for name, module in task.named_modules():
        if any(id(p) in ids for p in module.parameters(recurse=False)):
            for key, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                state[f"{name}.{key}"] = value
    return state


def _train(task, features: torch.Tensor, labels: torch.Tensor, lr: float, weight_decay: float, seed: int) -> None:
    params = head_parameters(task)
    optimizer = torch.optim.AdamW(
        optimizer_groups({"head": params}, {"head": lr}, {"head": weight_decay}), foreach=True
    )
    generator = torch.Generator().manual_seed(seed)
    batch = min(BATCH, len(labels))
    steps = min(MAX_STEPS, max(MIN_STEPS, PASSES * math.ceil(len(labels) / batch)))
    task.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = torch.randperm(len(labels), generator=generator)[:batch].to(features.device)
        loss, _ = task.head_step(features[rows], labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    task.eval()


@torch.no_grad()
def _score(task, features: torch.Tensor, labels: torch.Tensor, metric: str) -> float:
    task.eval()
    metrics, _ = task.validation_metrics({k: v.cpu() for k, v in task.head_outputs(features, labels).items()})
    value = metrics.get(metric)
    if value is None:
        return -math.inf
    return -value if metric == "val_loss" else value


def fit_head(task, features: torch.Tensor, labels: torch.Tensor, cfg) -> Sweep:
    """Sweep the head's lr x weight decay on inner folds of (features, labels), then fit it on all of them.

    The task's head parameters are changed in place; nothing else is. Returns what the sweep chose.
    """
    state = _head_state(task)
    start = {k: v.detach().clone() for k, v in state.items()}

    def restore() -> None:
        with torch.no_grad():
            for key, value in state.items():
                value.copy_(start[key])

    candidates = [{"lr": lr, "weight_decay": wd} for lr in LRS for wd in WEIGHT_DECAYS]
    trainable = [p.requires_grad for p in task.parameters()]
    ids = {id(p) for p in head_parameters(task)}
    for p in task.parameters():
        p.requires_grad_(id(p) in ids)

    def evaluate(train, test) -> list[float]:
        train, test = torch.as_tensor(train), torch.as_tensor(test)
        scores = []
        for candidate in candidates:
            restore()
            _train(task, features[train], labels[train], candidate["lr"], candidate["weight_decay"], cfg.seed)
            scores.append(_score(task, features[test], labels[test], cfg.early_stop))
        return scores

    threads = torch.get_num_threads()
    # Steps this small are all overhead: on a busy machine more threads cost far more than they save (as the linear
    # probe's scikit-learn fits, which run on one thread too).
    torch.set_num_threads(1)
    try:
        found = sweep(
            candidates,
            labels.tolist(),
            evaluate,
            seed=cfg.seed,
            default=candidates.index(DEFAULT),
            prefer=lambda c: (
                abs(math.log(c["lr"] / DEFAULT["lr"])) + abs(math.log(c["weight_decay"] / DEFAULT["weight_decay"]))
            ),
            metric=cfg.early_stop,
        )
        restore()
        _train(task, features, labels, found.best["lr"], found.best["weight_decay"], cfg.seed)
    finally:
        torch.set_num_threads(threads)
        for p, flag in zip(task.parameters(), trainable, strict=True):
            p.requires_grad_(flag)
    return found
