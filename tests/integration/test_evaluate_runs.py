"""`pictag evaluate --data` on the other trained runs: a fusion run on a product table, a fewshot-train run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewshot_data import write_class_folders  # noqa: E402
from product_data import write_products  # noqa: E402

from pictag.cli.main import main  # noqa: E402


def test_a_fusion_run_on_a_product_table(tmp_path, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    products = write_products(tmp_path / "products", per_class=4)
    table, images = str(products / "products.csv"), str(products / "images")
    model = ["--model", spec, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0"]
    options = ["--folds", "2", "--fold", "1", "--epochs", "2", "--freeze-encoders", "--batch-size", "8"]
    run = tmp_path / "fusion"
    assert main(["train", table, "--task", "fusion", "--images", images, *model, "--out", str(run), *options]) == 0
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(run), "--data", table, "--images", images, "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--workers", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    predictions = pd.read_parquet(out / "predictions.parquet")
    truth = pd.read_csv(table, dtype=str).set_index("id")["categories"]
    assert report["top1"] == (predictions["label"] == truth[predictions["id"]].to_numpy()).mean()
    assert (report["images"], report["classes"]) == (16, 4)
    assert (out / "errors.png").is_file()


def test_a_fewshot_train_run(tmp_path):
    train = write_class_folders(tmp_path / "train", per_class=4)
    val = write_class_folders(tmp_path / "val", per_class=2, seed=77)
    run = tmp_path / "ckpt"
    tiny = ["--model", "timm:test_efficientnet", "--random-weights", "--workers", "0", "--device", "cpu"]
    argv = ["fewshot-train", str(train), "--out", str(run), "--epochs", "1", "--batch-size", "6"]
    assert main([*argv, "--unfreeze-blocks", "1", *tiny]) == 0
    assert main(["evaluate", "--model", str(run), "--data", str(val), "--workers", "0", "--device", "cpu"]) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    assert (report["images"], report["classes"], report["model_classes"]) == (6, 3, 3)
