"""`pictag train --task fusion` and `pictag classify --images` on synthetic products with tiny random CLIP towers.

The label of a product needs its image and its text together: the image's colour decides one bit, the title's
word the other, so fusion must beat each modality alone. Stage 1 embeds once and trains heads on the cache; K-fold
writes oof.csv and cv.json; stage 2 starts each fold from stage 1's; inference averages folds, TTA views and runs
exactly as computed by hand; a fold killed with -9 resumes exactly; bad input is one line.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from product_data import write_products  # noqa: E402

from conftest import killed_once_written, subprocess_env  # noqa: E402
from pictag.cli.main import main  # noqa: E402

STAGE1 = ["--freeze-encoders", "--batch-size", "8", "--lr", "head=1e-2", "--warmup-epochs", "0", "--patience", "10"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> Path:
    return write_products(tmp_path_factory.mktemp("products"))


@pytest.fixture(scope="module")
def model(tiny_open_clip) -> list[str]:
    spec, checkpoint = tiny_open_clip
    return ["--model", spec, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0"]


def _train(products: Path, model: list[str], out: Path, *options: str) -> int:
    table, images = str(products / "products.csv"), str(products / "images")
    return main(["train", table, "--task", "fusion", "--images", images, *model, "--out", str(out), *options])


@pytest.fixture(scope="module")
def stage1(products, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "s1"
    assert _train(products, model, out, "--folds", "3", "--ablate", "--epochs", "20", *STAGE1, "--patience", "4") == 0
    return out


def test_fusion_beats_each_modality_alone_with_out_of_fold_predictions(stage1, capsys):
    cv = json.loads((stage1 / "cv.json").read_text())
    assert set(cv) >= {"top1_mean", "top1_std", "top3_mean", "top3_std", "folds"} and len(cv["folds"]) == 3
    # One bit each: a modality alone is at chance between the two classes it cannot tell apart.
    assert cv["top1_mean"] >= 0.9
    assert cv["image_top1_mean"] <= 0.7 and cv["text_top1_mean"] <= 0.7
    assert cv["top1_mean"] - max(cv["image_top1_mean"], cv["text_top1_mean"]) >= 0.25
    oof = _rows(stage1 / "oof.csv")
    assert list(oof[0]) == ["id", "label", "prediction", "score", "fold"]
    # No product is in two folds' validation, and every product is in one.
    assert sorted(int(r["id"]) for r in oof) == list(range(1, 49))
    by_fold = {f: {r["id"] for r in oof if r["fold"] == f} for f in ("0", "1", "2")}
    assert all(len(ids) == 16 for ids in by_fold.values())
    assert np.mean([r["label"] == r["prediction"] for r in oof]) == pytest.approx(cv["top1_mean"], abs=0.03)
    for fold in ("0", "1", "2"):
        assert (stage1 / f"fold{fold}" / "best" / "model.safetensors").is_file()
        header = _rows(stage1 / f"fold{fold}" / "metrics.csv")[0]
        assert {"val_top1", "val_top3", "val_image_top1", "val_text_top1"} <= set(header)
        # Each head's own training loss: train_loss is the fusion head's, not the sum of the three.
        rows = _rows(stage1 / f"fold{fold}" / "metrics.csv")
        assert {"train_image_loss", "train_text_loss"} <= set(header)
        assert all(float(r["train_loss"]) < float(r["train_image_loss"]) + float(r["train_text_loss"]) for r in rows)
    assert (stage1 / "per_class.csv").is_file() and (stage1 / "confusion.png").is_file()


def test_stage1_embeds_each_image_and_text_once(products, model, tmp_path, monkeypatch):
    from pictag.models.open_clip_backend import OpenClipEncoder

    calls = {"image": 0, "text": 0}
    image, text = OpenClipEncoder.forward_image, OpenClipEncoder.forward_text

    def count_image(self, pixels):
        calls["image"] += 1
        return image(self, pixels)

    def count_text(self, texts):
        calls["text"] += 1
        return text(self, texts)

    monkeypatch.setattr(OpenClipEncoder, "forward_image", count_image)
    monkeypatch.setattr(OpenClipEncoder, "forward_text", count_text)
    options = ["--fold", "0", "--folds", "2", "--epochs", "4", *STAGE1, "--seed", "5"]
    assert _train(products, model, tmp_path / "a", *options) == 0
    # 48 products in batches of 8, and their texts in one batch: before the first step, never after.
    assert calls == {"image": 6, "text": 1}
    assert _train(products, model, tmp_path / "b", *options) == 0
    assert calls == {"image": 6, "text": 1}, "the second run reads the embeddings from the cache"


def test_stage2_starts_each_fold_from_stage1_and_trains_the_towers(stage1, products, model, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "s2"
    device = ["--device", "cpu", "--workers", "0"]
    table, images = str(products / "products.csv"), str(products / "images")
    lr = ["--lr", "image=1e-4,text=1e-4,head=3e-4", "--batch-size", "16", "--epochs", "1", "--warmup-ratio", "0.1"]
    args = ["train", table, "--task", "fusion", "--images", images, "--folds", "3", "--fold", "1", *device, *lr]
    assert main([*args, "--init-from", str(stage1), "--out", str(out)]) == 0
    start, tuned = (
        load_file(stage1 / "fold1" / "best" / "model.safetensors"),
        load_file(out / "fold1" / "best" / "model.safetensors"),
    )
    moved = [k for k in start if not torch.equal(start[k], tuned[k])]
    assert any(k.startswith("encoder.module.visual.") for k in moved)
    assert any(k.startswith("encoder.module.transformer.") for k in moved)
    meta = json.loads((out / "fold1" / "best" / "pictag.json").read_text())
    assert meta["task"] == "fusion" and meta["backbone"] == model[1]
    assert not (out / "fold0").exists(), "--fold 1 trains fold 1 alone"
    assert "comes once every fold of 0, 1, 2 is done" in capsys.readouterr().out


def _by_hand(folder: Path, products: Path, ids: list[str]) -> torch.Tensor:
    """(N, C) probabilities of one fusion model, averaged over the eval crop and its mirror image."""
    from pictag.models.run_dir import load_run

    run = load_run(folder, device="cpu", precision="fp32")
    texts = {r["id"]: r["title"] for r in _rows(products / "products.csv")}
    crops = torch.stack(
        [
            torch.from_numpy(run.encoder.preprocess.crop(Image.open(products / "images" / f"{i}.png").convert("RGB")))
            for i in ids
        ]
    )
    text = F.normalize(run.encoder.forward_text([texts[i] for i in ids]).float(), dim=-1)
    out = []
    with torch.no_grad():
        for view in (crops, crops.flip(2)):
            image = F.normalize(run.encoder.forward_image(run.encoder.preprocess.normalize(view)).float(), dim=-1)
            out.append(run.head.eval()(torch.cat([image, text], dim=-1)).softmax(dim=-1))
    return torch.stack(out).mean(dim=0)


def test_classify_averages_folds_flip_and_runs_as_by_hand(stage1, products, model, tmp_path):
    other = tmp_path / "other"
    assert _train(products, model, other, "--folds", "3", "--fold", "2", "--epochs", "3", *STAGE1, "--seed", "3") == 0
    table, images = str(products / "products.csv"), str(products / "images")
    out = tmp_path / "pred.csv"
    base = ["classify", table, "--images", images, "--model", str(stage1), "--model", str(other), "--device", "cpu"]
    assert main([*base, "--workers", "0", "--tta", "flip", "--top-k", "2", "--probabilities", "--out", str(out)]) == 0
    rows = _rows(out)
    ids = [r["id"] for r in rows]
    classes = ["c00", "c01", "c10", "c11"]
    got = torch.tensor([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    # Three folds of the first run and the one fold of the other, each over two views: a mean of four models.
    folders = [stage1 / f"fold{f}" for f in "012"] + [other / "fold2"]
    expected = torch.stack([_by_hand(f, products, ids) for f in folders]).mean(dim=0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert [r["label"] for r in rows] == [classes[i] for i in expected.argmax(dim=-1).tolist()]
    assert list(rows[0])[:5] == ["id", "label", "score", "label_1", "score_1"]
    submission = tmp_path / "submission.csv"
    assert main([*base, "--workers", "0", "--format", "submission", "--out", str(submission)]) == 0
    assert list(_rows(submission)[0]) == ["id", "label"] and len(_rows(submission)) == 48


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-text", "has no text column (title, description or text; its columns: id, categories): a fusion model"),
        ("unknown-column", "--text-columns blurb: "),
        ("empty", "is empty (no product rows)"),
        ("missing-image", "1 product(s) have no image in"),
        ("fold-labels", "fold A: class(es) c00 have no training rows outside this fold (the folds' label sets differ)"),
        ("image-only-model", "has no text tower: the fusion task needs a CLIP --model, or --text-model SPEC"),
    ],
)
def test_bad_input_is_one_line(case, message, tmp_path, model, capsys):
    root = write_products(tmp_path / "p", per_class=2, fold_column=case == "fold-labels")
    table = root / "products.csv"
    rows = _rows(table)
    options = ["--epochs", "1", *STAGE1]
    if case == "no-text":
        rows = [{"id": r["id"], "categories": r["categories"]} for r in rows]
    elif case == "unknown-column":
        options += ["--text-columns", "blurb"]
    elif case == "empty":
        rows = []
    elif case == "missing-image":
        (root / "images" / "3.png").unlink()
        options += ["--missing-image", "error"]
    elif case == "fold-labels":
        rows = [r for r in rows if not (r["categories"] == "c00" and r["fold"] == "B")]
        options += ["--fold", "A"]
    elif case == "image-only-model":
        model = ["--model", "timm:test_efficientnet_gn", "--random-weights", "--device", "cpu", "--workers", "0"]
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id", "categories", "title"])
        writer.writeheader()
        writer.writerows(rows)
    assert _train(root, model, tmp_path / "run", *options) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_kill_9_during_a_fold_then_rerun_equals_an_uninterrupted_run(products, tiny_hf_clip, tmp_path, capsys):
    from safetensors.torch import load_file

    table, images = str(products / "products.csv"), str(products / "images")
    options = ["--task", "fusion", "--images", images, "--model", f"hf:{tiny_hf_clip}", "--device", "cpu"]
    options += ["--workers", "0", "--folds", "2", "--epochs", "15", *STAGE1, "--patience", "100", "--save-every", "1"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "pictag", "train", table, *options, "--out", str(killed)]
    env = subprocess_env()
    with killed_once_written(command, env, killed / "fold1" / "last.ckpt"):
        assert main(["train", table, *options, "--out", str(whole)]) == 0
    state = torch.load(killed / "fold1" / "last.ckpt", weights_only=True)
    assert state["epoch"] < 15, "killed before fold 1 was done"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already trained" in rerun.stdout and f"continuing {killed / 'fold1'} from last.ckpt" in rerun.stdout
    for fold in ("fold0", "fold1"):
        for a, b in zip(_rows(whole / fold / "metrics.csv"), _rows(killed / fold / "metrics.csv"), strict=True):
            # A mid-epoch checkpoint keeps the epoch's loss sum in float32: equal to 1e-6, like the engine's test.
            # The head stage (epoch 0) fits these few products to a loss near 1e-6, where float32 sums in another
            # thread count differ by about that much: an absolute bound too.
            for key in ("train_loss", "val_loss", "val_top1", "val_top3"):
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), (fold, a["epoch"], key)
        expected = load_file(whole / fold / "best" / "model.safetensors")
        got = load_file(killed / fold / "best" / "model.safetensors")
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(_rows(whole / "oof.csv"), _rows(killed / "oof.csv"), strict=True):
        assert [a[k] for k in ("id", "label", "prediction", "fold")] == [
            b[k] for k in ("id", "label", "prediction", "fold")
        ]
        assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-5)


def test_a_fold_column_with_several_views_per_product(tmp_path, model, capsys):
    root = write_products(tmp_path / "p", per_class=4, fold_column=True)
    for n in (1, 2, 3):  # second views, found as <id>_*.*
        Image.open(root / "images" / f"{n}.png").transpose(Image.FLIP_LEFT_RIGHT).save(root / "images" / f"{n}_b.png")
    (root / "images" / "16.png").unlink()  # a product without an image: a black placeholder, counted
    out = tmp_path / "run"
    assert _train(root, model, out, "--multi-image", "random", "--epochs", "2", *STAGE1) == 0
    printed = capsys.readouterr().out
    assert "1 product(s) have no image in" in printed and "black placeholders" in printed
    cv = json.loads((out / "cv.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == ["A", "B"] and cv["missing_images"] == 1
    oof = _rows(out / "oof.csv")
    assert sorted(int(r["id"]) for r in oof) == list(range(1, 17))
    folds = {r["id"]: r["fold"] for r in _rows(root / "products.csv")}
    assert all(r["fold"] == folds[r["id"]] for r in oof), "each row is predicted by the fold its column names"


def _write(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_a_second_table_validates(products, model, tmp_path, capsys):
    rows = _rows(products / "products.csv")
    train = _write(tmp_path / "train.csv", [r for i, r in enumerate(rows) if i % 4])
    val = _write(tmp_path / "val.csv", [r for i, r in enumerate(rows) if not i % 4])
    images, out = str(products / "images"), tmp_path / "run"
    argv = ["train", train, "--task", "fusion", "--images", images, *model, "--val", val, "--epochs", "20", *STAGE1]
    assert main([*argv, "--out", str(out)]) == 0
    history = _rows(out / "metrics.csv")
    assert max(float(r["val_top1"]) for r in history) >= 0.9  # 4 classes, chance 0.25, on products never trained on
    assert json.loads((out / "best" / "pictag.json").read_text())["metrics"]["missing_images"] == 0

    def refused(train_table: str, val_table: str, *more: str) -> str:
        args = ["train", train_table, "--task", "fusion", "--images", images, *model, "--val", val_table, *more]
        assert main([*args, "--epochs", "1", *STAGE1, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    assert "id(s) are in both" in refused(train, _write(tmp_path / "overlap.csv", rows[:3]))
    other = [{**r, "categories": "c99"} for i, r in enumerate(rows) if not i % 4]
    assert "has classes" in refused(train, _write(tmp_path / "other.csv", other))
    assert "drop --folds, --fold and --val-split" in refused(train, val, "--folds", "3")
    folded = _write(tmp_path / "folded.csv", [{**r, "fold": "AB"[i % 2]} for i, r in enumerate(rows) if i % 4])
    assert "has a fold column" in refused(folded, val)
