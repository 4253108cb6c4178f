from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pictag import device as device_module
from pictag.device import BF16_FLAGS, cpu_bf16_flags, default_workers, proc_cpuinfo_flags, resolve_device
from pictag.errors import PictagError


def test_cpu_defaults_to_fp32_when_pinned():
    # tests/conftest.py pins PICTAG_PRECISION=fp32, which an unset precision follows.
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so the automatic choice is the GPU")
    assert resolve_device() == (torch.device("cpu"), torch.float32)


def test_explicit_choices_and_refusals():
    assert resolve_device("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_device("cpu", "fp32") == (torch.device("cpu"), torch.float32)
    with pytest.raises(PictagError, match="precision 'fp8': use one of auto, fp32"):
        resolve_device("cpu", "fp8")
    with pytest.raises(PictagError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(PictagError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_bf16_detection_agrees_with_proc_cpuinfo():
    assert set(cpu_bf16_flags()) == {flag for flag in BF16_FLAGS if flag in proc_cpuinfo_flags()}


def test_auto_picks_bf16_where_the_cpu_has_it_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv("PICTAG_PRECISION")
    device_module._announce.cache_clear()
    expected = torch.bfloat16 if cpu_bf16_flags() else torch.float32
    with caplog.at_level(logging.WARNING, logger="pictag.device"):
        assert resolve_device("cpu") == (torch.device("cpu"), expected)  # unset means auto
        assert resolve_device("cpu", "auto") == (torch.device("cpu"), expected)
    said = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert len(said) == 1, "the choice is said once per process"
    assert ("bf16 on cpu" if cpu_bf16_flags() else "fp32 on cpu") in said[0]


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    # Stands in for an older CPU (AVX2, or AVX-512 without BF16), where emulated bf16 is slower than fp32.
    monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda: ())
    assert resolve_device("cpu", "auto") == (torch.device("cpu"), torch.float32)


def test_precision_env_is_the_default(monkeypatch):
    monkeypatch.setenv("PICTAG_PRECISION", "bf16")
    assert resolve_device("cpu") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_device("cpu", "fp32") == (torch.device("cpu"), torch.float32), "an explicit choice wins"


def test_default_workers_is_positive():
    assert default_workers() >= 1
