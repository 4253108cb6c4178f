"""`pictag fewshot`, `fewshot-eval` and `fewshot-train` end to end on generated images with tiny random models."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewshot_data import write_class_folders, write_task  # noqa: E402

from conftest import TINY, killed_once_written, subprocess_env  # noqa: E402
from pictag.cli.main import main  # noqa: E402
from pictag.models import create_model  # noqa: E402

TINY = ["--model", "timm:test_efficientnet", *TINY[2:]]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tasks")
    truth = {
        "setA/task1": write_task(root / "setA" / "task1", shots=4, queries=3),
        "setB/task7": write_task(root / "setB" / "task7", shots=2, queries=2, classes=("red", "blue"), seed=50),
    }
    (root / "setA" / "task1" / "query" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return root, truth


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# Each head is tested on its own in tests/unit/test_heads.py; auto fits them all.
@pytest.mark.parametrize("method", ["prototype", "auto"])
def test_fewshot_writes_one_row_per_query_image(tasks, tmp_path, method):
    root, truth = tasks
    out = tmp_path / "result.csv"
    assert main(["fewshot", str(root), "--out", str(out), "--method", method, *TINY]) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["task", "image", "label", "score"]
    assert sorted((r["task"], r["image"]) for r in rows) == sorted((t, i) for t, q in truth.items() for i in q)
    for r in rows:
        assert r["label"] in truth[r["task"]].values() and 0 < float(r["score"]) <= 1
    correct = sum(r["label"] == truth[r["task"]][r["image"]] for r in rows)
    assert correct >= 0.8 * len(rows), "coloured squares should be easy even for a random CNN"
    errors = _rows(out.with_name("result.errors.csv"))
    assert [(e["task"], e["image"]) for e in errors] == [("setA/task1", "broken.jpg")]
    summary = {r["task"]: r for r in _rows(out.with_name("result.tasks.csv"))}
    assert summary["setA/task1"]["method"].startswith("auto:" if method == "auto" else method)
    assert summary["setB/task7"]["classes"] == "2"
    assert (tmp_path / "result.config.yaml").is_file()


def test_fewshot_with_a_clip_model_uses_text_prototypes(tasks, tmp_path, tiny_open_clip):
    root, truth = tasks
    spec, checkpoint = tiny_open_clip
    out = tmp_path / "clip.parquet"
    args = ["fewshot", str(root), "--out", str(out), "--method", "tip-adapter"]
    args += ["--model", spec, "--checkpoint", str(checkpoint)]
    assert main([*args, "--workers", "0", "--device", "cpu"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == sum(len(q) for q in truth.values())


def test_fewshot_refuses_an_empty_support_class(tmp_path, capsys):
    write_task(tmp_path / "t1", shots=2, queries=1)
    for image in (tmp_path / "t1" / "support" / "green").iterdir():
        image.unlink()
    assert main(["fewshot", str(tmp_path), "--out", str(tmp_path / "r.csv"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "t1/support has empty class folder(s) 'green'" in err and "Traceback" not in err


def test_fewshot_refuses_a_support_class_with_only_unreadable_images(tmp_path, capsys):
    write_task(tmp_path / "t1", shots=1, queries=1)
    (tmp_path / "t1" / "support" / "red" / "0.jpg").write_bytes(b"garbage")
    assert main(["fewshot", str(tmp_path), "--out", str(tmp_path / "r.csv"), *TINY]) == 2
    assert "no readable support image in class(es) red" in capsys.readouterr().err


def test_fewshot_eval_prints_accuracy_with_confidence_intervals(tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=5)
    out = tmp_path / "eval"
    argv = ["fewshot-eval", str(data), "--ways", "3", "--shots", "1,2", "--episodes", "3", "--queries", "2"]
    assert main([*argv, "--method", "all", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    for method in ("prototype", "tip-adapter", "linear-probe", "auto"):
        assert f"{method}  3-way  1-shot" in printed
    assert "±" in printed and "ms/task" in printed
    assert {r["method"] for r in _rows(out / "scores.csv")} == {"prototype", "tip-adapter", "linear-probe", "auto"}
    assert (out / "accuracy.png").stat().st_size > 0


def test_fewshot_train_checkpoint_loads_back_for_fewshot(tasks, tmp_path):
    train = write_class_folders(tmp_path / "train", per_class=4)
    val = write_class_folders(tmp_path / "val", per_class=2, seed=77)
    out = tmp_path / "ckpt"
    argv = ["fewshot-train", str(train), "--val", str(val), "--out", str(out)]
    assert main([*argv, "--epochs", "2", "--unfreeze-blocks", "2", "--batch-size", "6", *TINY]) == 0
    for name in ("best.pth", "last.pth", "metrics.csv", "curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2"]

    from pictag.heads.trained import read_trained_head

    meta = read_trained_head(out / "last.pth")
    assert meta["classes"] == ["blue", "green", "red"] and meta["head_weight"].shape[0] == 3
    # The fine-tuned backbone differs from the starting weights and loads back by name.
    tuned = create_model("timm:test_efficientnet", checkpoint=out / "last.pth", device="cpu")
    start = create_model("timm:test_efficientnet", random_weights=True, device="cpu")
    tuned_state, start_state = tuned.module.state_dict(), start.module.state_dict()
    changed = [k for k in start_state if not torch.equal(tuned_state[k], start_state[k])]
    assert changed and all(k.startswith(("blocks.3", "blocks.4", "conv_head", "bn2")) for k in changed), changed
    root, _ = tasks
    result = tmp_path / "tuned.csv"
    ckpt = ["--model", "timm:test_efficientnet", "--checkpoint", str(out / "best.pth"), "--workers", "0"]
    assert main(["fewshot", str(root), "--out", str(result), *ckpt]) == 0
    assert len(_rows(result)) == 13
    # The trained head itself, for tasks over classes it knows.
    result = tmp_path / "head.csv"
    assert main(["fewshot", str(root), "--out", str(result), "--method", "finetuned", *ckpt]) == 0
    rows = _rows(result)
    assert len(rows) == 13 and {r["label"] for r in rows} <= {"red", "green", "blue"}
    assert {r["method"] for r in _rows(tmp_path / "head.tasks.csv")} == {"finetuned"}


def test_unfreeze_last_blocks_counts_blocks():
    from pictag.errors import PictagError
    from pictag.train.blocks import image_blocks, unfreeze_last_blocks

    module = create_model("timm:test_efficientnet", random_weights=True, device="cpu").module
    blocks, tail = image_blocks(module)
    trainable = unfreeze_last_blocks(module, 1)
    assert {id(p) for p in trainable} == {id(p) for p in [*blocks[-1].parameters(), *tail]}
    assert sum(p.requires_grad for p in module.parameters()) == len(trainable)
    assert unfreeze_last_blocks(module, 0) == []
    with pytest.raises(PictagError, match="blocks"):
        unfreeze_last_blocks(module, len(blocks) + 1)


def test_block_layouts_of_clip_models(tiny_open_clip, tiny_hf_clip):
    from pictag.train.blocks import image_blocks, unfreeze_last_blocks

    spec, checkpoint = tiny_open_clip
    for encoder in (
        create_model(spec, checkpoint=checkpoint, device="cpu"),
        create_model(f"hf:{tiny_hf_clip}", device="cpu"),
    ):
        blocks, tail = image_blocks(encoder.module)
        assert len(blocks) == 1 and tail, type(encoder.module).__name__
        trainable = {id(p) for p in unfreeze_last_blocks(encoder.module, 1)}
        text = [n for n, p in encoder.module.named_parameters() if id(p) in trainable and "text" in n]
        assert not text, f"text tower parameters left trainable: {text[:3]}"


def test_fewshot_train_killed_then_rerun_continues_and_equals_an_uninterrupted_run(tmp_path):
    train = write_class_folders(tmp_path / "train", per_class=4)
    val = write_class_folders(tmp_path / "val", per_class=2, seed=77)
    options = [str(train), "--val", str(val), "--epochs", "3", "--unfreeze-blocks", "2"]
    options += ["--batch-size", "6", *TINY]
    command = [sys.executable, "-m", "pictag", "fewshot-train", *options]
    env = subprocess_env()
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    with killed_once_written([*command, "--out", str(killed)], env, killed / "last.ckpt"):  # after the first epoch
        assert main(["fewshot-train", *options, "--out", str(whole)]) == 0
    assert not (killed / "last.pth").exists()
    rerun = subprocess.run([*command, "--out", str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.startswith(f"continuing {killed} from last.ckpt (epoch "), rerun.stdout
    assert [r["epoch"] for r in _rows(killed / "metrics.csv")] == ["1", "2", "3"]
    expected, got = (torch.load(out / "last.pth", weights_only=True) for out in (whole, killed))
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(got["pictag"]["head_weight"], expected["pictag"]["head_weight"], rtol=1e-5, atol=1e-6)
