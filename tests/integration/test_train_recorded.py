"""What a training run records: config.yaml and best/pictag.json carry the values it used where options were left
unset (device, precision, workers, batch, learning rates, ...), never null; the banner names the precision that
trains; P×K batches take P from --batch-size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metric_data import write_objects, write_splits  # noqa: E402

from pictag.cli.main import main  # noqa: E402

# Options that every run of these tasks uses, whether given or not.
USED = ("precision", "device", "workers", "accumulate", "batch_size", "lr", "weight_decay", "image_size", "epochs")


def _nulls(value, path="") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    return []


@pytest.mark.parametrize("task", ["classifier", "arcface"])
def test_the_recorded_config_has_no_null_where_a_value_was_used(task, tmp_path, caplog, capsys):
    data = write_objects(tmp_path / "data", classes=6, ids=2, views=4)
    splits = write_splits(data, tmp_path / "splits.csv", val_ids=(0,)) if task == "arcface" else None
    out = tmp_path / "run"
    argv = ["train", str(data), "--task", task, "--model", "timm:test_efficientnet_gn", "--random-weights"]
    argv += ["--device", "cpu", "--workers", "0", "--epochs", "1", "--batch-size", "8", "--image-size", "32"]
    argv += ["--out", str(out), *(["--splits", str(splits)] if splits else ["--val-split", "0.25"])]
    assert main(argv) == 0

    config = yaml.safe_load((out / "config.yaml").read_text())
    used = (*USED, "classes_per_batch") if task == "arcface" else USED
    assert [name for name in used if config[name] is None] == []
    assert config["precision"] == "fp32" and config["device"] == "cpu" and config["workers"] == 0
    # After the head stage (LP-FT) the head fine-tunes at the backbone's rate, with the weight decay the sweep chose.
    assert config["lr"] == "backbone=0.0001,head=0.0001"
    training = json.loads((out / "best" / "pictag.json").read_text())["training"]
    assert _nulls(training) == []
    assert training["precision"] == "fp32" and training["lr"] == {"backbone": 1e-4, "head": 1e-4}
    assert training["weight_decay"]["head"] == training["head_stage"]["weight_decay"]
    assert training["memory"]["micro_batch"] * training["memory"]["accumulate"] == training["train_batch"]
    if task == "arcface":  # P from --batch-size and K: 8 // 4 = 2 classes a batch, not all 6
        assert (config["classes_per_batch"], training["samples_per_class"], training["train_batch"]) == (2, 4, 8)
    assert "training in fp32 on cpu ($PICTAG_PRECISION=fp32)" in caplog.text
    # The recorded config repeats the run: run again, it is the same run, already trained (not "options changed").
    assert main(["train", "--config", str(out / "config.yaml")]) == 0
    assert f"already trained {out}" in capsys.readouterr().out
