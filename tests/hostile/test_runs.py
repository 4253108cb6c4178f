"""Two writers on one output, and a resume after the weights behind the same model spec changed: refused at
once, in one line, for classify and for embed, so that no output ever mixes two runs or two models."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from hostile_inputs import CHILD_TIMEOUT, interrupt_after_commits, one_line
from PIL import Image

from conftest import ROOT, TINY_OPEN_CLIP, subprocess_env
from pictag.cli.main import main
from pictag.testing import save_random_open_clip

HOLD_LOCK = """
import sys
from pictag.storage.parts import PartStore
PartStore(sys.argv[1]).lock()
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 0, 0)).save(folder / f"{i}.jpg")
    return folder


def _command(task, folder, out, spec, checkpoint):
    labels = ["--labels", "a,b"] if task == "classify" else []
    return [task, str(folder), *labels, "--out", str(out), "--model", spec, "--checkpoint", str(checkpoint),
            "--device", "cpu", "--workers", "0", "--unit-size", "2"]  # fmt: skip


@pytest.mark.parametrize("task", ["classify", "embed"])
def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path, folder, task, tiny_open_clip, capsys):
    spec, checkpoint = tiny_open_clip
    out = tmp_path / ("out.csv" if task == "classify" else "emb")
    parts = out.with_name(out.name + ".parts") if task == "classify" else out
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(parts)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_command(task, folder, out, spec, checkpoint)) == 2
        assert f"is being written by pid {holder.pid}" in one_line(capsys.readouterr().err)
        assert not out.exists() or not any(out.glob("part-*"))  # the refused run wrote nothing
    finally:
        holder.communicate("", timeout=CHILD_TIMEOUT)
    assert main(_command(task, folder, out, spec, checkpoint)) == 0  # free again once the holder is gone


@pytest.mark.parametrize("task", ["classify", "embed"])
def test_resume_after_the_weights_behind_the_spec_changed_is_refused(tmp_path, folder, task, tiny_open_clip, monkeypatch, capsys):  # fmt: skip
    spec, original = tiny_open_clip
    weights = tmp_path / "weights.pt"
    shutil.copy(original, weights)
    out = tmp_path / ("out.csv" if task == "classify" else "emb")
    with monkeypatch.context() as patch:
        interrupt_after_commits(patch, 1)
        assert main(_command(task, folder, out, spec, weights)) == 130
    # The same spec and the same checkpoint path, other weights in the file.
    other = save_random_open_clip(tmp_path / "other", "pictag-tiny", TINY_OPEN_CLIP, seed=7)
    shutil.copy(other, weights)
    capsys.readouterr()
    assert main([*_command(task, folder, out, spec, weights), "--resume"]) == 2
    assert "the weights behind the model spec changed" in one_line(capsys.readouterr().err)
    shutil.copy(original, weights)  # the weights it started with: the resume finishes it
    assert main([*_command(task, folder, out, spec, weights), "--resume"]) == 0
