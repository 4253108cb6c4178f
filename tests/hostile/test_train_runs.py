"""Training runs gone wrong: a diverging run, a run folder holding non-finite weights, a resume after the data
gained a class, and the messages that name what to change. Each ends in one line and exit 2, never in a model saved
from nan weights, a traceback or a cut-off message."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hostile_inputs import one_line

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewshot_data import write_class_folders  # noqa: E402

from conftest import TINY  # noqa: E402
from pictag.cli.main import main  # noqa: E402

FAST = [*TINY, "--image-size", "32", "--batch-size", "4", "--warmup-epochs", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("colours") / "data", per_class=4)


@pytest.fixture(scope="module")
def run(colours, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(colours), "--out", str(out), "--val-split", "0.5", *FAST]) == 0
    return out


def _poison(run: Path, target: Path) -> Path:
    """A copy of `run` whose best/ holds one nan in its weights."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, target)
    weights = target / "best" / "model.safetensors"
    state = load_file(weights)
    key = next(k for k, v in state.items() if v.is_floating_point() and k.startswith("head."))
    state[key].view(-1)[0] = float("nan")
    save_file(state, weights)
    return target


def test_a_diverging_run_stops_with_exit_2_and_saves_nothing_from_it(colours, tmp_path, capsys):
    out = tmp_path / "diverged"
    argv = ["train", str(colours), "--out", str(out), "--val-split", "0.5", *FAST, "--lr", "1e9", "--batch-size", "2"]
    assert main(argv) == 2
    error = one_line(capsys.readouterr().err)
    assert error.startswith("pictag train: error: training diverged: the loss became nan at epoch 1, batch ")
    # The head stage sweeps its own rates: its model, validated as epoch 0 before the first step, is what best/ holds.
    assert "best/ holds epoch 0, the head stage's model" in error and "lower --lr" in error
    assert json.loads((out / "best" / "pictag.json").read_text())["metrics"]["epoch"] == 0
    from safetensors.torch import load_file

    weights = load_file(out / "best" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    if (out / "last.ckpt").exists():  # a checkpoint, if any, is from before the divergence
        state = torch.load(out / "last.ckpt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["task"].values() if v.is_floating_point())


def test_a_run_with_non_finite_weights_is_refused_where_it_is_loaded(run, colours, tmp_path, capsys):
    poisoned = _poison(run, tmp_path / "poisoned")
    out = tmp_path / "labels.csv"
    assert main(["classify", str(colours), "--model", str(poisoned), "--out", str(out), "--workers", "0"]) == 2
    error = one_line(capsys.readouterr().err)
    assert "holds non-finite weights (head." in error and "its training diverged" in error
    assert not out.exists()

    stage2 = ["train", str(colours), "--out", str(tmp_path / "stage2"), "--val-split", "0.5", *FAST]
    assert main([*stage2, "--init-from", str(poisoned)]) == 2
    assert "holds non-finite weights" in one_line(capsys.readouterr().err)


def test_a_resume_after_the_data_gained_a_class_is_refused_naming_it(run, colours, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(colours, data)
    out = tmp_path / "run"
    shutil.copytree(run, out)  # its last.ckpt, made on the same folder path's three classes
    state = torch.load(out / "last.ckpt", weights_only=True)
    state["config"]["data"] = str(data)
    torch.save(state, out / "last.ckpt")
    shutil.copytree(data / "red", data / "yellow")
    assert main(["train", str(data), "--out", str(out), "--val-split", "0.5", *FAST]) == 2
    captured = capsys.readouterr()
    assert "continuing" not in captured.out
    error = one_line(captured.err)
    assert f"cannot continue {out}: the data's classes changed since last.ckpt (new: yellow)" in error
    assert "--fresh" in error


def test_init_from_a_run_with_another_head_names_the_tensor_that_does_not_fit(run, colours, tmp_path, capsys):
    stage2 = ["train", str(colours), "--out", str(tmp_path / "stage2"), "--val-split", "0.5", *FAST]
    assert main([*stage2, "--init-from", str(run), "--head", "mlp"]) == 2
    error = one_line(capsys.readouterr().err)
    assert f"--init-from {run}'s head does not fit its architecture: " in error
    assert error.split("does not fit its architecture: ")[1].startswith(("missing ", "unexpected "))


def test_too_small_classes_are_named_with_their_counts(colours, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(colours, data)
    (data / "tiny").mkdir()
    shutil.copy(next((colours / "red").glob("*.jpg")), data / "tiny" / "0.jpg")
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--val-split", "0.5", *FAST]) == 2
    assert "1 class(es) have fewer (tiny (1))" in one_line(capsys.readouterr().err)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--folds", "5", *FAST]) == 2
    assert "4 class(es) have fewer (tiny (1), blue (4), green (4), red (4))" in one_line(capsys.readouterr().err)


def test_a_cross_validated_run_without_images_says_how_to_classify_it(run, colours, tmp_path, capsys):
    folds = tmp_path / "cv"
    for fold in ("fold0", "fold1"):
        shutil.copytree(run, folds / fold)
    (folds / "cv.json").write_text(json.dumps({"top1_mean": 0.5}))
    out = tmp_path / "labels.csv"
    assert main(["classify", str(colours), "--model", str(folds), "--out", str(out), "--workers", "0"]) == 2
    error = one_line(capsys.readouterr().err)
    assert f"{folds} is a cross-validated run" in error and "--images" in error and str(folds / "fold0") in error
    assert "is not a pictag run" not in error
