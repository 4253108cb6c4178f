"""`pictag train --task clip` (FLYP) on a tiny random open_clip model: zero-shot accuracy on a separable colour set
goes from chance to well above it, the run still classifies zero-shot, and --wise-ft writes the interpolation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from pictag.cli.main import main
from pictag.models import create_model
from pictag.models.run_dir import read_meta
from pictag.train.tasks.clip import interpolate

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _write_colours(root: Path, per_class: int, seed: int, flat: bool = False) -> Path:
    """Solid colours with pixel noise: any random crop of an image keeps its class."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        folder = root if flat else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{name}{i}.png")
    return root


def _accuracy(path: Path) -> float:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(r["key"].startswith(r["label"]) for r in rows) / len(rows)


def test_clip_task_learns_zero_shot_and_writes_wise_ft(tmp_path, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    data = _write_colours(tmp_path / "data", per_class=24, seed=0)
    test = _write_colours(tmp_path / "test", per_class=6, seed=1, flat=True)
    run = tmp_path / "run"
    common = ["--workers", "0", "--device", "cpu"]
    labels = ["--labels", ",".join(COLOURS)]
    before = tmp_path / "before.csv"
    assert main(["classify", str(test), "--model", spec, "--checkpoint", str(checkpoint), *labels, "--out",
                 str(before), *common]) == 0  # fmt: skip
    assert main(["train", str(data), "--task", "clip", "--model", spec, "--checkpoint", str(checkpoint),
                 "--out", str(run), "--val-split", "0.25", "--epochs", "3", "--batch-size", "8", "--lr", "3e-4",
                 "--warmup-epochs", "0", "--wise-ft", "0.5", *common]) == 0  # fmt: skip

    with open(run / "metrics.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert {"lr_image", "lr_text", "lr_logit_scale"} <= set(history[0])
    assert max(float(r["val_top1"]) for r in history) >= 0.6  # chance: 0.25; measured 0.875
    meta = read_meta(run)
    assert meta["task"] == "clip" and meta["head"] is None and meta["classes"] == sorted(COLOURS)
    # Still zero-shot: held-out images against the class names, with labels or with the run's own classes.
    after = tmp_path / "after.csv"
    assert main(["classify", str(test), "--model", str(run), *labels, "--out", str(after), *common]) == 0
    own = tmp_path / "own.csv"
    assert main(["classify", str(test), "--model", str(run), "--out", str(own), *common]) == 0
    # Measured: 0.0 before training, 0.83 after (chance 0.25).
    assert _accuracy(after) >= 0.6 and _accuracy(own) >= 0.6, (_accuracy(before), _accuracy(after))

    # WiSE-FT 0.5: halfway between the original weights and best/'s.
    original = create_model(spec, checkpoint=checkpoint, device="cpu").state_dict()
    tuned, wise = load_file(run / "best" / "model.safetensors"), load_file(run / "wise-ft-0.5" / "model.safetensors")
    for key, value in original.items():
        if value.is_floating_point():
            torch.testing.assert_close(wise[f"encoder.{key}"], (value + tuned[f"encoder.{key}"]) / 2)
    assert read_meta(run / "wise-ft-0.5")["metrics"]["wise_ft"] == 0.5
    assert create_model(str(run / "wise-ft-0.5"), device="cpu").spec.endswith("wise-ft-0.5")


def test_wise_ft_endpoints_are_the_two_models():
    torch.manual_seed(0)
    original = {"w": torch.randn(4, 3), "n": torch.tensor(3)}
    tuned = {"w": torch.randn(4, 3), "n": torch.tensor(5)}
    assert torch.equal(interpolate(original, tuned, 0.0)["w"], original["w"])
    assert torch.equal(interpolate(original, tuned, 1.0)["w"], tuned["w"])
    assert interpolate(original, tuned, 0.0)["n"] == 5  # counters are not interpolated


def test_clip_task_refuses_what_it_cannot_train(tmp_path, capsys):
    data = _write_colours(tmp_path / "data", per_class=2, seed=0)
    base = ["train", str(data), "--task", "clip", "--out", str(tmp_path / "run"), "--workers", "0", "--device", "cpu"]
    assert main([*base, "--model", "timm:test_vit", "--random-weights"]) == 2
    error = capsys.readouterr().err.strip()
    assert "image-only" in error and "\n" not in error


def test_clip_task_trains_on_captions_from_a_table(tmp_path, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    images = _write_colours(tmp_path / "img", per_class=3, seed=2, flat=True)
    rows = [
        f"{p},{p.stem.rstrip('0123456789')},a {p.stem} square photographed up close" for p in sorted(images.iterdir())
    ]
    (tmp_path / "table.csv").write_text("path,label,text\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "table.csv"), "--task", "clip", "--model", spec, "--checkpoint",
                 str(checkpoint), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert read_meta(run)["head"] is None and (run / "best" / "model.safetensors").is_file()
