"""The engine's optimiser side: per-group options, parameter groups without decay on norms, schedules, EMA,
the data order, and the precision chosen per device."""

from __future__ import annotations

import types

import pytest
import torch

from pictag.errors import PictagError
from pictag.train.data import EpochSampler
from pictag.train.optim import EMA, Schedule, optimizer_groups, per_group


def test_per_group_parses_one_number_or_names():
    assert per_group("3e-4", ["backbone", "head"], "--lr") == {"backbone": 3e-4, "head": 3e-4}
    assert per_group("head=1e-2", ["backbone", "head"], "--lr") == {"backbone": None, "head": 1e-2}
    with pytest.raises(PictagError, match="--lr names group 'neck', but this task's parameter groups are backbone"):
        per_group("neck=1", ["backbone", "head"], "--lr")
    with pytest.raises(PictagError, match="give NAME=NUMBER"):
        per_group("head=fast", ["backbone", "head"], "--lr")


def test_no_weight_decay_on_norms_and_biases_and_layer_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    backbone, head = list(model[:2].parameters()), list(model[2].parameters())
    depth = {id(p): (1, 1) for p in model[0].parameters()}
    groups = optimizer_groups(
        {"backbone": backbone, "head": head}, {"backbone": None, "head": 1e-2}, {"backbone": 0.1, "head": None},
        depth=depth, layer_decay=0.5,
    )  # fmt: skip
    by = {(g["group"], g["weight_decay"] > 0, g["base_lr"]): len(g["params"]) for g in groups}
    assert by == {
        ("backbone", True, 5e-5): 1,  # Linear weight, one block back: half the backbone's 1e-4
        ("backbone", False, 5e-5): 1,  # its bias
        ("backbone", False, 1e-4): 2,  # LayerNorm weight and bias
        ("head", True, 1e-2): 1,
        ("head", False, 1e-2): 1,
    }


def test_schedules_warm_up_then_decay_and_plateau_cuts():
    cosine = Schedule("cosine", warmup=2, total=10)
    factors = [cosine.factor(s) for s in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0 and factors[-1] < 0.05
    assert Schedule("linear", 0, 10).factor(5) == 0.5
    assert cosine.factor(4, start=4) < 1.0  # a group that starts late warms up then
    plateau = Schedule("plateau", 0, 10, patience=2)
    for metric in (0.5, 0.6, 0.6, 0.55):
        plateau.epoch_end(metric, higher_is_better=True)
    assert plateau.factor(5) == pytest.approx(0.1)
    restored = Schedule("plateau", 0, 10)
    restored.load_state_dict(plateau.state_dict())
    assert restored.factor(5) == pytest.approx(0.1)


def test_ema_averages_and_swaps():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    ema = EMA(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema.update()
    ema.swap()
    assert torch.allclose(layer.weight, torch.full((1, 2), 0.5))
    ema.swap()
    assert torch.allclose(layer.weight, torch.ones(1, 2))


def test_epoch_sampler_order_depends_on_seed_and_epoch_only_and_shares_ranks():
    labels = [0] * 6 + [1] * 3
    sampler = EpochSampler(labels, seed=1)
    sampler.set_epoch(2)
    order = sampler.share()
    assert sorted(order) == list(range(9)) and EpochSampler(labels, seed=1).share() != order
    sampler.set_epoch(2, start=4)
    assert [i for i, epoch in sampler] == order[4:] and len(sampler) == 5
    ranks = [EpochSampler(labels, seed=1, rank=r, world=2) for r in (0, 1)]
    assert len(ranks[0].share()) == len(ranks[1].share()) == 5
    assert set(ranks[0].share()) | set(ranks[1].share()) == set(range(9))
    balanced = EpochSampler(labels, seed=0, balance=True)
    drawn = [labels[i] for e in range(20) for i in (balanced.set_epoch(e) or balanced.share())]
    assert 0.4 < sum(drawn) / len(drawn) < 0.6


def test_precision_workers_and_accumulation_per_device():
    from pictag.train.engine import choose_settings

    run = {"epochs": 2, "freeze_epochs": 0, "init_from": None}  # a backbone that trains
    cfg = types.SimpleNamespace(precision=None, workers=None, accumulate=None, **run)
    cpu = choose_settings(cfg, torch.device("cpu"))
    assert cpu.fabric_precision == "32-true" and cpu.accumulate == 1 and cpu.workers >= 1
    given = choose_settings(
        types.SimpleNamespace(precision="bf16", workers=0, accumulate=3, **run), torch.device("cpu")
    )
    assert (given.fabric_precision, given.workers, given.accumulate) == ("bf16-mixed", 0, 3)
