from __future__ import annotations

import pytest
import torch

from pictag.device import default_workers, resolve_device
from pictag.errors import PictagError


def test_cpu_defaults_to_fp32():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so the automatic choice is the GPU")
    assert resolve_device() == (torch.device("cpu"), torch.float32)


def test_explicit_choices_and_refusals():
    assert resolve_device("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(PictagError, match="precision"):
        resolve_device("cpu", "fp8")
    with pytest.raises(PictagError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(PictagError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_default_workers_is_positive():
    assert default_workers() >= 1
