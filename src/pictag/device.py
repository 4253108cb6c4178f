"""Device and precision choice: CUDA, then MPS, then CPU; half precision on GPUs, fp32 on CPU."""

from __future__ import annotations

import os

import torch

from pictag.errors import PictagError

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | None = None, precision: str | None = None) -> tuple[torch.device, torch.dtype]:
    """Pick (device, autocast dtype), honouring explicit choices and refusing ones this machine cannot run."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise PictagError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise PictagError(f"device {device} asked for, but CUDA is not available here: use --device cpu")
    if torch_device.type == "mps" and not torch.backends.mps.is_available():
        raise PictagError(f"device {device} asked for, but MPS is not available here: use --device cpu")
    if precision is None:
        if torch_device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp16" if torch_device.type == "mps" else "fp32"
    if precision not in _DTYPES:
        raise PictagError(f"unknown precision {precision!r}: use one of {', '.join(_DTYPES)}")
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch_device, _DTYPES[precision]


def default_workers(device: torch.device | None = None) -> int:
    """DataLoader workers for decoding: one per core beside a GPU; half the cores when the model runs on the CPU.

    On the CPU the model's own threads need the cores, and decoding is the smaller share of the work.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if device is not None and device.type == "cpu":
        cores //= 2
    return max(1, min(cores, 16))
