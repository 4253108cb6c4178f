"""The head stage (LP-FT's first half) on coloured squares with a tiny random timm model: it trains on the cached
frozen features (the backbone runs once per training image, for the prototypes and the head stage together), an
unfrozen run's first step starts from the head it fitted, and the run records what its sweep chose."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewshot_data import write_class_folders  # noqa: E402

from conftest import TINY  # noqa: E402
from pictag.cli.main import main  # noqa: E402
from pictag.models.registry import create_model  # noqa: E402
from pictag.train.data import load_train_data  # noqa: E402
from pictag.train.head_stage import fit_head  # noqa: E402
from pictag.train.options import ClassifierConfig  # noqa: E402
from pictag.train.task import create_task  # noqa: E402

SPEC = "timm:test_efficientnet_gn"


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("colours") / "data", per_class=9)


def _task(colours: Path, tmp_path: Path, **options):
    cfg = ClassifierConfig(
        data=str(colours), out=str(tmp_path / "run"), model=SPEC, random_weights=True, workers=0, device="cpu",
        val_split=0.25, epochs=1, batch_size=8, early_stop="val_top1", label_smoothing=0.1, **options,
    )  # fmt: skip
    data = load_train_data(cfg)
    torch.manual_seed(0)
    encoder = create_model(SPEC, random_weights=True, device="cpu")
    images = []
    encoder.module.register_forward_hook(lambda module, args, out: images.append(len(args[0])))
    return cfg, data, create_task("classifier", encoder, data, cfg), images


def test_the_head_stage_trains_on_the_cache(colours, tmp_path):
    cfg, data, task, images = _task(colours, tmp_path)
    assert sum(images) == len(data.train), "the prototypes embed each training image once, into the cache"
    start = task.head.weight.detach().clone()
    features, labels = task.head_features(data, cfg)
    found = fit_head(task, features, labels, cfg)
    assert sum(images) == len(data.train), "the head stage ran the backbone on no image: it read the cache"
    assert features.shape == (len(data.train), task.encoder.embed_dim)
    assert not torch.equal(task.head.weight, start), "the head was trained"
    assert found.folds == 3 and set(found.best) == {"lr", "weight_decay"} and len(found.scores) == 8
    logits = task.head_outputs(features, labels)["logits"]
    assert (logits.argmax(1) == labels).float().mean() == 1.0, "3 colours are separable on frozen features"


def test_an_unfrozen_run_starts_from_the_head_stages_head(colours, tmp_path):
    from pictag.train.engine import Engine, make_fabric

    cfg, data, task, _ = _task(colours, tmp_path)
    features, labels = task.head_features(data, cfg)
    fit_head(task, features, labels, cfg)
    probe = task.head.weight.detach().clone()

    cfg, data, task, _ = _task(colours, tmp_path)
    fabric, settings = make_fabric(cfg)
    engine = Engine(fabric, task, data, cfg, settings)
    first, original = [], engine._optimizer_step

    def step(n):
        if not first:  # the weights the first backbone step's gradients were computed with
            first.append((task.head.weight.detach().clone(), [p.requires_grad for p in task.encoder.parameters()]))
        return original(n)

    engine._optimizer_step = step
    engine.fit()
    head, backbone_trains = first[0]
    torch.testing.assert_close(head, probe)
    assert all(backbone_trains), "the backbone trains from the first step: no --freeze-epochs needed"


def test_a_run_records_what_the_sweep_chose(colours, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", str(colours), "--out", str(out), "--val-split", "0.25", "--epochs", "1", "--batch-size", "8"]
    assert main([*argv, *TINY]) == 0
    printed = capsys.readouterr().out
    assert "head stage on 20 cached training images: lr " in printed
    recorded = json.loads((out / "best" / "pictag.json").read_text())["training"]
    stage = recorded["head_stage"]
    assert stage["lr"] in (3e-3, 1e-2, 3e-2, 1e-1) and stage["weight_decay"] in (1e-4, 1e-2) and stage["folds"] == 3
    # Then the whole model trains, the head at the backbone's rate and the weight decay the sweep chose.
    config = (out / "config.yaml").read_text()
    assert "lr: backbone=0.0001,head=0.0001" in config
    assert f"weight_decay: backbone=0.05,head={stage['weight_decay']:g}" in config
    # --freeze-epochs keeps its meaning: the head trains through the images for those epochs, and no head stage runs
    # (unless the backbone never unfreezes: then the epochs read the cache, after the head stage)
    assert main([*argv, "--freeze-epochs", "1", "--epochs", "2", "--fresh", *TINY]) == 0
    assert "head stage" not in capsys.readouterr().out
    assert "head_stage" not in json.loads((out / "best" / "pictag.json").read_text())["training"]


def test_the_head_stages_model_is_validated_as_epoch_0_and_kept_unless_beaten(colours, tmp_path, capsys):
    import csv

    out = tmp_path / "run"
    argv = ["train", str(colours), "--out", str(out), "--val-split", "0.25", "--epochs", "2", "--batch-size", "8"]
    assert main([*argv, *TINY]) == 0
    assert "epoch 0 (the head stage's model): train_loss " in capsys.readouterr().out
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    scores = [float(r["val_top1"]) for r in rows]
    best = json.loads((out / "best" / "pictag.json").read_text())["metrics"]
    # best/ is the head stage's model only when every trained epoch scores lower; else the first trained epoch with
    # the highest score (3 colours: every epoch scores 1.0, a tie that goes to epoch 1)
    trained = scores[1:]
    expected = 0 if scores[0] > max(trained) else 1 + trained.index(max(trained))
    assert best["epoch"] == expected
    assert float(rows[0]["train_loss"]) > 0
