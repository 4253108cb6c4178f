"""The memory check before training: a step's peak is measured on real allocations, and a batch that does not fit
is split into accumulated micro-batches, or refused in one line."""

from __future__ import annotations

import pytest
import torch

from pictag.errors import PictagError
from pictag.train.memory import fit_batch, measurable, peak_bytes

MB = 2**20
CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not measurable(CPU), reason="peak RSS is measured through Linux's /proc")


def images_step(per_image: int):
    """A step whose peak holds `per_image` bytes per image, touched so that they are resident."""

    def probe(images: int) -> None:
        block = torch.ones(images * per_image // 4, dtype=torch.float32)
        block.add_(1.0)

    return probe


def test_peak_of_a_step_is_what_it_allocates():
    probe = images_step(40 * MB)
    probe(1)
    peak = peak_bytes(lambda: probe(2), CPU)
    assert 75 * MB < peak < 95 * MB, peak / MB


def test_a_batch_that_fits_runs_whole():
    fit = fit_batch(images_step(10 * MB), 8, CPU, available=2000 * MB)
    assert (fit.micro_batch, fit.accumulate) == (8, 1)


def test_a_batch_too_large_is_split_into_accumulated_micro_batches_of_the_same_total(caplog):
    # 8 images of 40 MB need about 320 MB; 80% of 250 MB holds 4 of them.
    fit = fit_batch(images_step(40 * MB), 8, CPU, available=250 * MB)
    assert (fit.micro_batch, fit.accumulate) == (4, 2)
    assert "accumulate into every optimiser step (the batch stays 8)" in caplog.text
    assert fit.record()["available_gb"] == round(250 * MB / 2**30, 2)


def test_state_the_optimiser_adds_counts():
    fit = fit_batch(images_step(10 * MB), 8, CPU, extra_bytes=150 * MB, available=250 * MB)
    assert fit.micro_batch == 4  # 150 MB of state + 4 x 10 MB fit 200 MB; 8 images do not


def test_not_one_image_fitting_is_refused_in_one_line():
    with pytest.raises(PictagError) as err:
        fit_batch(images_step(40 * MB), 8, CPU, available=30 * MB)
    assert "needs about" in str(err.value) and "--image-size" in str(err.value) and "\n" not in str(err.value)
