"""`pictag train --task arcface` end to end on generated objects with a tiny random timm model: P×K batches read
from a splits CSV, Recall@1 raised by training, the margin-free frozen warm-up, the embedding run directory used by
embed and search, exact resume after kill -9, and one-line refusals."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metric_data import write_objects, write_splits  # noqa: E402

from conftest import killed_once_written, subprocess_env  # noqa: E402
from pictag.cli.main import main  # noqa: E402

SPEC = "timm:test_efficientnet_gn"
RUN = ["--model", SPEC, "--workers", "0", "--device", "cpu", "--task", "arcface", "--warmup-epochs", "0"]
FAST = ["--embed-dim", "32", "--arcface-s", "16", "--arcface-m", "0.3", "--classes-per-batch", "3"]
FAST += ["--samples-per-class", "4", "--lr", "backbone=1e-3,head=1e-2"]


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data folder, splits CSV, random starting weights): 6 classes × 4 objects × 4 views; object 0 validates."""
    root = tmp_path_factory.mktemp("objects")
    data = write_objects(root / "data")
    import timm

    torch.manual_seed(0)
    weights = root / "start.pth"
    torch.save(timm.create_model("test_efficientnet_gn").state_dict(), weights)
    return data, write_splits(data, root / "splits.csv"), weights


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "best" / "model.safetensors")


def _baseline_recall(data: Path, splits: Path, weights: Path) -> float:
    """Leave-one-out Recall@1 of the validation images with the starting backbone's own features."""
    from pictag.eval.retrieval import recall_at_k
    from pictag.models.registry import create_model
    from pictag.train.data import embed_split, load_train_data
    from pictag.train.options import ArcfaceConfig

    val = load_train_data(ArcfaceConfig(data=str(data), out="unused", splits=str(splits), task="arcface"), True).val
    features, labels = embed_split(val, create_model(SPEC, checkpoint=str(weights), device="cpu"))
    return recall_at_k(features.numpy(), labels.numpy(), features.numpy(), labels.numpy(), [1], leave_one_out=True)[1]


def test_training_raises_recall_and_the_run_embeds_and_searches(objects, tmp_path, capsys):
    data, splits, weights = objects
    out = tmp_path / "run"
    argv = ["train", str(data), "--splits", str(splits), "--out", str(out), "--checkpoint", str(weights)]
    assert main([*argv, "--epochs", "4", "--freeze-epochs", "1", *RUN, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "trained 4 epoch(s)" in printed and "val_recall@1" in printed
    rows = _rows(out / "metrics.csv")
    recall = [float(r["val_recall@1"]) for r in rows]
    before = _baseline_recall(data, splits, weights)
    assert max(recall) >= 0.9 and max(recall) >= before + 0.15, (before, recall)
    assert float(rows[-1]["val_map@r"]) > float(rows[0]["val_map@r"]) + 0.2
    meta = json.loads((out / "best" / "pictag.json").read_text())
    assert meta["task"] == "arcface" and meta["classes"] == [f"c{i}" for i in range(6)]
    assert meta["metrics"]["val_recall@1"] == max(recall), "best/ is the epoch of the best validation Recall@1"
    assert meta["embedding"] == {"dim": 32, "batchnorm": True, "in_dim": 256}
    assert meta["head"] == {"name": "arcface", "num_classes": 6, "dim": 32, "scale": 16.0, "subcenters": 1}

    # The run is an embedder: create_model gives the trained, normalised 32-d embedding.
    from pictag.models.registry import create_model
    from pictag.models.run_dir import load_run

    encoder = create_model(str(out), device="cpu")
    assert encoder.embed_dim == 32
    run = load_run(out, device="cpu")
    pixels = torch.rand(2, 3, *encoder.preprocess.size)
    embedded = encoder.encode_image(pixels)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(embedded, run.encoder.encode_image(pixels))

    # embed and search take the run like any model spec.
    store = tmp_path / "emb"
    assert (
        main(["embed", str(data), "--model", str(out), "--out", str(store), "--workers", "0", "--device", "cpu"]) == 0
    )
    query = data / "c2" / "c2o0_1.jpg"
    results = tmp_path / "found.csv"
    assert main(["search", str(store), "--image", str(query), "--top-k", "4", "--out", str(results)]) == 0
    found = _rows(results)
    assert len(found) == 4 and found[0]["key"] == "c2/c2o0_1.jpg", found[0]
    assert sum(row["key"].startswith("c2/") for row in found) >= 3, found


def test_warm_up_has_no_margin_and_leaves_the_backbone_as_it_was(objects, tmp_path):
    data, splits, weights = objects
    base = ["--splits", str(splits), "--checkpoint", str(weights), "--epochs", "1", "--freeze-epochs", "1"]
    base += [*RUN, *FAST]
    runs = []
    for margin in ("0.5", "0"):
        out = tmp_path / f"m{margin}"
        assert main(["train", str(data), "--out", str(out), *base, "--arcface-m", margin]) == 0
        runs.append(_weights(out))
    trained, margin_free = runs
    for key in trained:
        torch.testing.assert_close(trained[key], margin_free[key], rtol=0, atol=0, msg=key)
    start = torch.load(weights, weights_only=True)
    backbone = {k.removeprefix("encoder.module."): v for k, v in trained.items() if k.startswith("encoder.module.")}
    assert backbone.keys() == start.keys() - {"classifier.weight", "classifier.bias"}
    for key, value in backbone.items():
        assert torch.equal(value, start[key]), f"{key} moved in the frozen warm-up"


def test_kill_9_mid_epoch_then_rerun_equals_an_uninterrupted_run(objects, tmp_path):
    data, splits, weights = objects
    argv = ["train", str(data), "--splits", str(splits), "--checkpoint", str(weights), "--epochs", "2"]
    argv += [
        "--freeze-epochs",
        "1",
        "--save-every",
        "1",
        "--schedule",
        "cosine-restarts",
        "--t0",
        "0.5",
        "--t-mult",
        "2",
    ]
    argv += [*RUN, *FAST]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = subprocess_env()
    command = [sys.executable, "-m", "pictag", *argv, "--out", str(killed)]
    with killed_once_written(command, env, killed / "last.ckpt"):
        assert main([*argv, "--out", str(whole)]) == 0
    state = torch.load(killed / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0 and state["batch"] > 0, "killed mid-epoch"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[0].startswith(f"continuing {killed} from last.ckpt (epoch 1, batch")
    for a, b in zip(_rows(whole / "metrics.csv"), _rows(killed / "metrics.csv"), strict=True):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-5
        assert a["val_recall@1"] == b["val_recall@1"]
    expected, got = _weights(whole), _weights(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty-train", "split 'train' of"),
        ("p", "--classes-per-batch 9: the training images have 6 classes"),
        ("classifier-open-set", "has classes its train split lacks (c5)"),
        ("with-val-split", "--splits names the validation images: drop --val-split"),
        ("early-stop", "--early-stop val_top1: the arcface task reports"),
    ],
)
def test_bad_input_is_one_line(case, message, objects, tmp_path, capsys):
    data, splits, weights = objects
    extra = []
    if case == "empty-train":
        rows = _rows(splits)
        splits = tmp_path / "only_val.csv"
        with open(splits, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**row, "split": "val", "path": str(data.parent / row["path"])} for row in rows)
    elif case == "p":
        extra = ["--classes-per-batch", "9"]
    elif case == "classifier-open-set":
        splits = write_splits(data, tmp_path / "open.csv", val_ids=(), val_classes=("c5",))
        extra = ["--task", "classifier"]
    elif case == "with-val-split":
        extra = ["--val-split", "0.2"]
    elif case == "early-stop":
        extra = ["--early-stop", "val_top1"]
    args = ["train", str(data), "--splits", str(splits), "--out", str(tmp_path / "run"), "--epochs", "1"]
    fast = FAST[-2:] if case == "classifier-open-set" else FAST  # --lr: a classifier takes none of arcface's own
    args += ["--checkpoint", str(weights), *RUN, *fast, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
