"""Device and precision choice: CUDA, then MPS, then CPU; half precision on GPUs, bf16 on CPUs with native bf16.

`precision="auto"` (also what an unset precision means, unless $PICTAG_PRECISION names one) picks the fastest
precision a device runs natively: bf16 (or fp16) on GPUs, fp16 on MPS, bf16 on CPUs with AVX512-BF16 or AMX-BF16
instructions, fp32 on every other CPU (there bf16 is emulated and slower than fp32). On this project's CPU bf16 ran
the ViT-B/32 image tower 2.2x faster than fp32, with the accuracy cost measured in docs/cpu-inference.md.
`precision="fp32"` stays exact: the golden tests pin it. `choose_precision` is the one rule, for inference,
training and the compiled engines.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection
from pathlib import Path

import torch

from pictag.errors import PictagError

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = ("auto", *_DTYPES)
# x86 instructions that run bf16 matrix products natively (/proc/cpuinfo's names; torch's use an underscore more).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 instructions of this CPU (of `BF16_FLAGS`), as torch's cpuinfo, else /proc/cpuinfo, sees them.

    Detected from the CPU itself, never guessed from its model name: the same name covers parts with and without.
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.6; reads CPUID through cpuinfo
    if capabilities is not None:
        found = capabilities()
        return tuple(flag for flag in BF16_FLAGS if found.get(flag))
    return tuple(flag for flag in BF16_FLAGS if flag in proc_cpuinfo_flags())


def proc_cpuinfo_flags() -> frozenset[str]:
    """The first processor's flags in Linux's /proc/cpuinfo; empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(precision, why) that `precision="auto"` picks on `device`."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU runs bf16"
        return "fp16", "this GPU has no bf16"
    if device.type == "mps":
        return "fp16", "Apple GPU"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return "bf16", f"this CPU has native bf16 ({', '.join(flags)})"
        return "fp32", "this CPU has no native bf16 (AVX512-BF16 or AMX-BF16), where bf16 is slower than fp32"
    return "fp32", f"no faster precision is known for {device.type}"


@functools.cache
def _announce(device_type: str, precision: str, why: str) -> None:
    # Once per process and choice: a serving worker or a job builds its model once, tests build many.
    log.warning("precision auto: %s on %s (%s); --precision fp32 for exact fp32 results", precision, device_type, why)


def pick_device(device: str | None = None) -> torch.device:
    """The device `device` names (cpu, cuda, cuda:N or mps), else the best available; refuses one not here."""
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
    return torch_device


def resolve_device(device: str | None = None, precision: str | None = None) -> tuple[torch.device, torch.dtype]:
    """Pick (device, autocast dtype) for inference, honouring explicit choices and refusing ones this machine cannot
    run.

    Args:
        device: cpu, cuda, cuda:N or mps; the best available when None.
        precision: One of `PRECISIONS`; None means $PICTAG_PRECISION, else "auto" (see `choose_precision`).
    """
    torch_device = pick_device(device)
    asked = precision or os.environ.get("PICTAG_PRECISION") or "auto"
    chosen, why = choose_precision(torch_device, asked)
    if asked == "auto":
        _announce(torch_device.type, chosen, why)
    if chosen == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch_device, _DTYPES[chosen]


def choose_precision(
    device: torch.device | None,
    precision: str | None = None,
    *,
    training: bool = False,
    backward: bool = True,
    engine: str = "torch",
    engine_precisions: Collection[str] | None = None,
    chosen: str | None = None,
) -> tuple[str, str]:
    """(precision, why): the one rule for what `precision` ("auto", a name, or None) means, for inference, training
    and the compiled engines alike.

    A named precision is kept (None means $PICTAG_PRECISION when set); "auto" is the fastest precision `device`
    runs natively (`auto_precision`), except in two cases:

    - Training whose `backward` pass runs through the backbone trains fp32 on every CPU: on a CPU with AVX512-BF16
      and AMX, bf16 autocast trained EfficientNet-Lite0 at 224 px at 0.92x fp32's images/s (6.10 against 6.65,
      batch 16, one thread; its depthwise convolutions' backward pass is slower in bf16), to the same accuracy
      (hymenoptera, three seeds: -0.004, inside fp32's spread of 0.052; benchmarks/train_precision.py).
      `--precision bf16` asks for it. A backbone that never trains only embeds: there auto is inference's choice,
      as Lite0's forward pass ran about 1.5x faster in bf16.
    - A compiled `engine` (onnx, openvino) without kernels for auto's choice (`engine_precisions`, what it runs)
      runs fp32. A named precision it cannot run is kept, for the engine to refuse with the way out.

    Args:
        device: Where it runs; unused when `chosen` is given.
        precision: One of `PRECISIONS`, or None ($PICTAG_PRECISION, else "auto").
        training: Training, rather than inference.
        backward: In training, whether the backbone's backward pass runs.
        engine: The engine that runs the model: "torch" or a compiled engine's name.
        engine_precisions: The precisions `engine` has kernels for (None: any).
        chosen: What auto already chose on the torch path (an encoder's own precision), instead of choosing again.

    Raises:
        PictagError: an unknown precision.
    """
    given = precision or os.environ.get("PICTAG_PRECISION") or "auto"
    if given != "auto":
        if given not in _DTYPES:
            raise PictagError(f"unknown precision {given!r}: use one of {', '.join(PRECISIONS)}")
        return given, f"--precision {given}" if precision else f"$PICTAG_PRECISION={given}"
    if training and backward and device is not None and device.type == "cpu":
        return "fp32", "auto on a CPU; bf16 did not train faster there (benchmarks/train_precision.py)"
    if chosen is None:
        chosen, why = auto_precision(device)
    else:
        why = "auto's choice on the torch path"
    if engine_precisions is not None and chosen not in engine_precisions:
        return "fp32", f"--engine {engine} runs fp32: it has no {chosen} kernels on the CPU (auto chose {chosen})"
    return chosen, f"{why}; the frozen backbone only embeds" if training and not backward else why


def training_precision(device: torch.device, precision: str | None = None, backward: bool = True) -> tuple[str, str]:
    """(precision, why) that training runs in on `device`: `choose_precision` for training."""
    return choose_precision(device, precision, training=True, backward=backward)


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
