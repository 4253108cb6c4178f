"""A classifier run whose backbone never trains (`--freeze-epochs` >= `--epochs`) on coloured squares with a tiny
random timm model: the backbone runs once per training and validation image (into the frozen-feature cache), not
once per epoch; the head stage fits the head first and the epochs train it on the cache at the swept rate; the run
folder is a normal one, that classifies, continues and starts over."""

from __future__ import annotations

import csv
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
from pictag.train.options import ClassifierConfig  # noqa: E402
from pictag.train.task import create_task  # noqa: E402

SPEC = "timm:test_efficientnet_gn"


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("colours") / "data", per_class=9)


def test_the_backbone_runs_once_per_image_not_per_epoch(colours, tmp_path):
    from pictag.train.engine import Engine, make_fabric

    cfg = ClassifierConfig(
        data=str(colours), out=str(tmp_path / "run"), model=SPEC, random_weights=True, workers=0, device="cpu",
        val_split=0.25, epochs=3, freeze_epochs=3, batch_size=8, early_stop="val_top1", label_smoothing=0.1,
        unfreeze_blocks=1,  # which blocks would train after the frozen epochs: none here
    )  # fmt: skip
    data = load_train_data(cfg)
    torch.manual_seed(0)
    encoder = create_model(SPEC, random_weights=True, device="cpu")
    images = []
    encoder.module.register_forward_hook(lambda module, args, out: images.append(len(args[0])))
    task = create_task("classifier", encoder, data, cfg)
    assert task.cached
    fabric, settings = make_fabric(cfg)
    result = Engine(fabric, task, data, cfg, settings).fit()
    assert result.epochs == 3
    assert sum(images) == len(data.train) + len(data.val), "each image embedded once, for the head stage and 3 epochs"


def test_a_frozen_run_learns_classifies_continues_and_starts_over(colours, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", str(colours), "--out", str(out), "--val-split", "0.25", "--batch-size", "8"]
    argv += ["--freeze-epochs", "3", "--epochs", "3", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "head stage on 20 cached training images" in printed and "trained 3 epoch(s)" in printed
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"], "epoch 0: the head stage's model"
    assert float(rows[-1]["val_top1"]) > 0.5, "3 colours: above the 1/3 of chance"
    assert float(rows[1]["lr_backbone"]) == 0.0
    for name in ("last.ckpt", "config.yaml", "curves.png", "confusion.png", "per_class.csv", "best/pictag.json"):
        assert (out / name).is_file(), name
    stage = json.loads((out / "best" / "pictag.json").read_text())["training"]["head_stage"]
    # The head goes on at a tenth of the rate the sweep chose, as with fusion's frozen towers.
    assert f"head={stage['lr'] / 10:g}" in (out / "config.yaml").read_text()

    from PIL import Image

    from pictag.models.run_dir import load_run

    run = load_run(out, device="cpu")
    paths = sorted(colours.glob("*/*.jpg"))
    crops = torch.stack([run.encoder.preprocess(Image.open(p).convert("RGB")) for p in paths])
    predicted = run.head(run.encoder.encode_image(crops)).argmax(dim=-1)
    correct = sum(run.classes[i] == p.parent.name for i, p in zip(predicted.tolist(), paths, strict=True))
    assert correct / len(paths) > 0.5, "best/ classifies from the images, through the usual loader"

    assert main(argv) == 0
    assert f"already trained {out} from last.ckpt" in capsys.readouterr().out
    assert main([*argv, "--fresh"]) == 0
    printed = capsys.readouterr().out
    assert "head stage on 20 cached training images" in printed and "already trained" not in printed
    with open(out / "metrics.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert [r["val_top1"] for r in again] == [r["val_top1"] for r in rows], "a fresh start computes the same"


def test_a_frozen_run_stopped_after_an_epoch_continues_to_the_same_result(colours, tmp_path, monkeypatch, capsys):
    from pictag.train.engine import Engine

    argv = ["train", str(colours), "--val-split", "0.25", "--batch-size", "8", "--freeze-epochs", "3", "--epochs", "3"]
    assert main([*argv, "--out", str(tmp_path / "whole"), *TINY]) == 0
    log_epoch = Engine._log_epoch

    def stop_after_two(self, row, step):
        log_epoch(self, row, step)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_log_epoch", stop_after_two)
        assert main([*argv, "--out", str(out), *TINY]) != 0
    capsys.readouterr()
    assert main([*argv, "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"continuing {out} from last.ckpt (epoch 3" in printed and "head stage" not in printed

    def scores(run: Path) -> list:
        with open(run / "metrics.csv", newline="") as f:
            return [(r["epoch"], r["train_loss"], r["val_loss"]) for r in csv.DictReader(f)]

    assert scores(out) == scores(tmp_path / "whole")
