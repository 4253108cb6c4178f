"""`pictag evaluate --data` on real photos: a Lite0 run trained here with the real ImageNet weights, evaluated on
hymenoptera's validation split (153 images, 2 classes); its report's top-1 must equal the fraction of
`pictag classify`'s rows whose label is the image's folder, counted with pandas, exactly.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/evaluate_real.py [--epochs 2]

It prints both numbers, their equality, and the report's other metrics; it exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _shared import DATASETS, LITE0, lite0_weights

from pictag.cli.main import main


def run(argv: list[str]) -> float:
    started = time.perf_counter()
    if main(argv) != 0:
        sys.exit(f"failed: pictag {' '.join(argv)}")
    return time.perf_counter() - started


def measure(epochs: int, work: Path) -> bool:
    data = DATASETS / "hymenoptera" / "hymenoptera_data"
    val = str(data / "val")
    run_dir, predictions = work / "run", work / "preds.csv"
    model = ["--model", LITE0, "--checkpoint", lite0_weights()]
    trained = run(["train", str(data / "train"), *model, "--epochs", str(epochs), "--out", str(run_dir)])
    evaluated = run(["evaluate", "--model", str(run_dir), "--data", val])
    classified = run(["classify", val, "--model", str(run_dir), "--out", str(predictions)])
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    rows = pd.read_csv(predictions)
    by_pandas = (rows["label"] == rows["key"].str.split("/").str[0]).mean()
    print(
        f"\ntrain {trained:.0f} s, evaluate {evaluated:.0f} s, classify {classified:.0f} s\n"
        f"evaluate report top-1 {report['top1']!r} on {report['images']} images\n"
        f"classify + pandas top-1 {float(by_pandas)!r} on {len(rows)} images\n"
        f"equal: {report['top1'] == by_pandas}\n"
        + "  ".join(f"{name} {report[name]:.4f}" for name in ("top5", "macro_f1", "balanced_accuracy", "ece"))
    )
    return report["top1"] == by_pandas


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="evaluate-real-") as work:
        sys.exit(0 if measure(args.epochs, Path(work)) else 1)
