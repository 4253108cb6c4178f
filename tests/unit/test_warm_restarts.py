"""Cosine with warm restarts equals torch's `CosineAnnealingWarmRestarts`, step for step, and starts late groups
(a backbone unfrozen after the warm-up) at the start of their own first cycle."""

from __future__ import annotations

import math

import pytest
import torch

from pictag.train.optim import Schedule


@pytest.mark.parametrize("t0, t_mult", [(4, 1), (3, 2), (5, 3)])
def test_factors_equal_torch_warm_restarts(t0, t_mult):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=t_mult)
    schedule = Schedule("cosine-restarts", warmup=0, total=100, t0=t0, t_mult=t_mult)
    for step in range(60):
        assert math.isclose(schedule.factor(step), optimizer.param_groups[0]["lr"], abs_tol=1e-9), step
        optimizer.step()
        reference.step()


def test_a_late_group_starts_its_own_cycle_after_warmup():
    schedule = Schedule("cosine-restarts", warmup=2, total=40, t0=4, t_mult=1)
    assert [schedule.factor(s, start=10) for s in (10, 11)] == [1 / 3, 2 / 3]
    assert schedule.factor(12, start=10) == 1.0 and schedule.factor(16, start=10) == 1.0
    assert schedule.factor(14, start=10) == pytest.approx(0.5)
