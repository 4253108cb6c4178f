"""`pictag train` end to end on coloured squares with a tiny random timm model: learning, the run folder, exact
resume after kill -9, DDP over gloo with two processes, and one-line refusals of bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewshot_data import write_class_folders  # noqa: E402

from conftest import TINY, killed_once_written, subprocess_env  # noqa: E402
from pictag.cli.main import main  # noqa: E402

# Group norm: a random CNN's batch-norm running statistics would need many steps before eval mode sees them.
FAST = ["--batch-size", "8", "--lr", "backbone=1e-3,head=1e-2", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("colours") / "data", per_class=12)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "best" / "model.safetensors")


def test_train_learns_and_writes_the_run_folder(colours, tmp_path, capsys):
    data = tmp_path / "data"
    data.symlink_to(colours, target_is_directory=True)
    broken = tmp_path / "with_broken"
    import shutil

    shutil.copytree(colours, broken)
    (broken / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "run"
    argv = ["train", str(broken), "--out", str(out), "--val-split", "0.25", "--epochs", "3", "--head", "cosine"]
    assert main([*argv, *FAST, "--ema", "0.5", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "trained 3 epoch(s)" in printed and "1 unreadable image(s) skipped" in printed
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"], "epoch 0: the head stage's model, validated"
    for column in ("train_loss", "val_loss", "val_top1", "val_top5", "lr_backbone", "lr_head", "seconds", "img_s"):
        assert rows[1][column], column
    assert float(rows[-1]["val_top1"]) >= 0.8, "3 colours: well above the 1/3 of chance"
    # The head starts fitted on the eval crops' cached features (the head stage), so the first epoch's loss on
    # augmented crops is the highest: both losses fall from there.
    assert float(rows[-1]["val_loss"]) < float(rows[1]["val_loss"])
    assert float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"])
    for name in ("last.ckpt", "config.yaml", "curves.png", "confusion.png", "per_class.csv"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert [r["class"] for r in _rows(out / "per_class.csv")] == ["blue", "green", "red"]
    meta = json.loads((out / "best" / "pictag.json").read_text())
    assert meta["task"] == "classifier" and meta["classes"] == ["blue", "green", "red"]
    assert meta["head"]["name"] == "cosine" and meta["backbone"] == "timm:test_efficientnet_gn"
    # Every file of the run loads without pickled code.
    torch.load(out / "last.ckpt", weights_only=True)

    # The run classifies into its own classes through the usual loader.
    from pictag.models.run_dir import load_run

    run = load_run(out, device="cpu")
    images = sorted((colours / "green").glob("*.jpg"))[:4]
    from PIL import Image

    crops = torch.stack([run.encoder.preprocess(Image.open(p).convert("RGB")) for p in images])
    predicted = run.head(run.encoder.encode_image(crops)).argmax(dim=-1)
    assert [run.classes[i] for i in predicted] == ["green"] * 4

    # Stage 2 from stage 1's best weights, unfreezing the last block; finished runs are not run again.
    stage2 = tmp_path / "stage2"
    argv = ["train", str(broken), "--out", str(stage2), "--val-split", "0.25", "--epochs", "1", "--head", "cosine"]
    argv += ["--init-from", str(out), "--unfreeze-blocks", "1", "--layer-decay", "0.5", "--balance"]
    assert main([*argv, *FAST, *TINY]) == 0
    assert main([*argv, *FAST, *TINY]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith(f"already trained {stage2} from last.ckpt")


def test_kill_9_mid_epoch_then_rerun_equals_an_uninterrupted_run(colours, tmp_path, capsys):
    base = [sys.executable, "-m", "pictag", "train", str(colours), "--val-split", "0.25", "--epochs", "2"]
    base += [*FAST, "--batch-size", "4", "--accumulate", "2", "--clip-grad", "1.0", "--save-every", "1", *TINY]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    with killed_once_written([*base, "--out", str(killed)], subprocess_env(), killed / "last.ckpt"):
        # The uninterrupted run, in this process, while the child runs up to the kill.
        assert main(["train", str(colours), "--out", str(whole), *base[5:]]) == 0
    state = torch.load(killed / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0 and state["batch"] > 0, "killed mid-epoch"
    rerun = subprocess.run(
        [*base, "--out", str(killed)], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[0].startswith(f"continuing {killed} from last.ckpt (epoch 1, batch")
    for a, b in zip(_rows(whole / "metrics.csv"), _rows(killed / "metrics.csv"), strict=True):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-5, "the epoch's loss counts every batch once"
    expected, got = _weights(whole), _weights(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    # A changed option that alters the result refuses to continue, naming it.
    assert main(["train", str(colours), "--out", str(killed), *base[5:], "--label-smoothing", "0.2"]) == 2
    assert "--label-smoothing (was 0.1, now 0.2) changed" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Child processes of `pid` (torchrun starts its workers in sessions of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_ddp_two_processes_over_gloo_then_resume(colours, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(_free_port())]
    command += ["-m", "pictag", "train", str(colours), "--out", str(out), "--val-split", "0.25", "--epochs", "2"]
    command += [*FAST, "--batch-size", "4", "--save-every", "1", *TINY]
    proc = subprocess.Popen(command, env=subprocess_env(), start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.ckpt").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
    finally:  # kill -9 both training processes mid-run, then torchrun
        for pid in [*_children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = rerun.stdout.splitlines()
    assert lines[0].startswith(f"continuing {out} from last.ckpt"), lines
    assert sum("trained 2 epoch(s) on 2 DDP processes (parameters identical on every rank)" in x for x in lines) == 1
    assert sorted(p.name for p in out.iterdir() if "ckpt" in p.name) == ["last.ckpt"]
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["0", "1", "2"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "has empty class folder(s) 'green'"),
        ("single", "training a classifier needs at least two classes"),
        ("unknown-val", "has classes that"),
        ("lr", "--lr names group 'neck', but this task's parameter groups are backbone, head"),
        ("blocks", "cannot find the blocks of"),
        ("checkpoint", "is it for another model?"),
        ("early-stop", "--early-stop val_recall@1: the classifier task reports val_loss, val_top1"),
    ],
)
def test_bad_input_is_one_line(case, message, colours, tmp_path, capsys):
    data, extra = tmp_path / "data", []
    write_class_folders(data, per_class=2)
    if case == "empty":
        for image in (data / "green").iterdir():
            image.unlink()
    elif case == "single":
        data = write_class_folders(tmp_path / "one", per_class=2, classes=("red",))
    elif case == "unknown-val":
        val = write_class_folders(tmp_path / "val", per_class=1, classes=("red", "green"))
        (val / "green").rename(val / "purple")
        extra = ["--val", str(val)]
    elif case == "lr":
        extra = ["--lr", "neck=1e-3"]
    elif case == "blocks":
        extra = ["--unfreeze-blocks", "1", "--model", "timm:inception_v3"]
    elif case == "early-stop":
        extra = ["--early-stop", "val_recall@1"]
    elif case == "checkpoint":
        import timm

        torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "vit.pth")
        extra = ["--checkpoint", str(tmp_path / "vit.pth")]
    args = ["train", str(data), "--out", str(tmp_path / "run"), *TINY, *extra]
    if case == "checkpoint":
        args.remove("--random-weights")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if case == "early-stop":  # refused before any work
        assert not (tmp_path / "run").exists()
