"""Batches that fit: a training step's peak memory, measured, against what the machine has free.

Before the first step that backpropagates through the backbone, the engine runs a few probe steps on small slices
of a real batch and measures each one's peak above the memory in use before it: the process's peak RSS on the CPU
(Linux's VmHWM, reset through /proc/self/clear_refs; memory the allocator kept is handed back first, so the peak
counts what the step needs), `torch.cuda.max_memory_allocated` on a GPU. Memory grows linearly with the images of a
batch, so two sizes give the cost of the whole batch without running it, and a batch too large for the machine is
cut into micro-batches whose gradients are accumulated (`fit_batch`): the optimiser still sees the batch asked
for. When not even one image fits, training is refused in one line. The OOM killer gives no message at all: an
ArcFace run of 324-image batches was killed at 19 GB with nothing in its log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pictag.errors import PictagError

log = logging.getLogger(__name__)

# Of the memory free now, what a step may take: DataLoader workers, the allocator's fragmentation and other
# processes' growth need the rest.
SHARE = 0.8
GB = 2**30


@dataclass(frozen=True)
class Fit:
    """How a batch is run: `micro_batch` images per forward pass, `accumulate` passes per optimiser step.

    Attributes:
        micro_batch: Images per forward and backward pass.
        accumulate: Passes whose gradients make one batch (1: the batch runs whole).
        step_bytes: The estimated peak of a step of `micro_batch` images (optimiser state included).
        available_bytes: Memory free when it was measured (None where it cannot be measured).
    """

    micro_batch: int
    accumulate: int
    step_bytes: int | None = None
    available_bytes: int | None = None

    def record(self) -> dict:
        """The values a run records (GB, rounded), without the ones that could not be measured."""
        out: dict = {"micro_batch": self.micro_batch, "accumulate": self.accumulate}
        if self.step_bytes is not None:
            out["step_gb"] = round(self.step_bytes / GB, 2)
        if self.available_bytes is not None:
            out["available_gb"] = round(self.available_bytes / GB, 2)
        return out


def measurable(device: torch.device) -> bool:
    """Whether a step's peak and the free memory can be measured on `device` (CUDA, or a Linux CPU)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.access("/proc/self/clear_refs", os.W_OK)


def available_bytes(device: torch.device) -> int:
    """Memory a step may still take: the GPU's free memory (and what PyTorch holds unused), else the host's
    MemAvailable, lowered to a cgroup's limit where the process runs under one."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    free = _meminfo("MemAvailable")
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            cap, now = Path(limit).read_text().strip(), int(Path(used).read_text())
        except (OSError, ValueError):
            continue
        if cap.isdigit():
            free = min(free, int(cap) - now)
    return max(free, 0)


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak memory that `step()` takes above what was in use before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _trim()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status("VmRSS")
    step()
    return _status("VmHWM") - before


def fit_batch(
    probe: Callable[[int], None],
    batch: int,
    device: torch.device,
    *,
    extra_bytes: int = 0,
    available: int | None = None,
) -> Fit:
    """The largest micro-batch dividing `batch` whose training step fits in memory.

    Args:
        probe: Runs one forward and backward pass of its argument's number of images.
        batch: Images per optimiser step asked for.
        device: Where the steps run.
        extra_bytes: Memory the first real step adds that a probe does not (the optimiser's state).
        available: Free memory (measured when None).

    Raises:
        PictagError: not even one image's step fits.
    """
    available = available_bytes(device) if available is None else available
    budget = available * SHARE
    small, large = min(2, batch), min(4, batch)
    probe(small)  # the first pass allocates what every later one reuses (gradients, kernels' scratch space)
    at_small = peak_bytes(lambda: probe(small), device)
    at_large = peak_bytes(lambda: probe(large), device) if large > small else at_small
    per_image = max(at_large - at_small, 0) / max(large - small, 1)

    def need(images: int) -> int:
        return int(at_large + per_image * (images - large)) + extra_bytes

    sizes = [m for m in range(batch, 0, -1) if batch % m == 0]
    micro = next((m for m in sizes if need(m) <= budget), None)
    if micro is None:
        raise PictagError(
            f"a training step of one image needs about {need(1) / GB:.1f} GB and {available / GB:.1f} GB are free "
            f"({device.type}): free memory, train at a smaller --image-size, or freeze more (--unfreeze-blocks)"
        )
    if micro < batch:
        log.warning(
            "a training step of %d images needs about %.1f GB, %.1f GB are free (%s): %d passes of %d images each "
            "accumulate into every optimiser step (the batch stays %d)",
            batch,
            need(batch) / GB,
            available / GB,
            device.type,
            batch // micro,
            micro,
            batch,
        )
    return Fit(micro, batch // micro, need(micro), available)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise PictagError(f"/proc/self/status has no {key}")


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise PictagError(f"/proc/meminfo has no {key}")


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _trim() -> None:
    # glibc keeps freed memory for reuse: hand it back, so that the RSS before a step is what is alive.
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
