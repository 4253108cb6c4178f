"""Pipes and reruns: labels and templates from a pipe are read once and recorded as themselves; `--resume` on a
complete output with the same options succeeds, with other options it is refused naming them."""

from __future__ import annotations

import shlex
import subprocess
import sys

import yaml

from conftest import subprocess_env
from pictag.cli.main import main

LABELS = "cat,astronaut,coffee,rocket"


def test_labels_and_templates_from_pipes(tmp_path, photo_dir, tiny_hf_clip):
    out = tmp_path / "out.csv"
    pictag = shlex.join([sys.executable, "-m", "pictag"])
    command = (
        f"{pictag} classify {shlex.quote(str(photo_dir))} --model {shlex.quote(f'hf:{tiny_hf_clip}')} "
        f"--labels-file <(printf 'cat\\nrocket\\n') --templates <(printf 'a photo of a {{}}\\n') --workers 0 "
        f"--out {shlex.quote(str(out))}"
    )
    done = subprocess.run(["bash", "-c", command], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((tmp_path / "out.config.yaml").read_text())
    assert config["labels"] == ["cat", "rocket"] and config["labels_file"] is None
    assert config["templates"] == ["a photo of a {}"]
    # The resolved config repeats the run, with no pipe left to read.
    again = tmp_path / "again.csv"
    assert main(["classify", "--config", str(tmp_path / "out.config.yaml"), "--out", str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_resume_of_a_complete_output(tmp_path, photo_dir, tiny_open_clip, capsys):
    spec, checkpoint = tiny_open_clip
    labels = tmp_path / "labels.txt"
    labels.write_text(LABELS.replace(",", "\n"))
    out = tmp_path / "out.csv"
    args = ["classify", str(photo_dir), "--model", spec, "--checkpoint", str(checkpoint), "--labels-file", str(labels),
            "--workers", "0", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    written = out.read_bytes(), out.stat().st_mtime_ns
    capsys.readouterr()
    # A scheduled rerun of the same command: one line, exit 0, nothing rewritten.
    assert main([*args, "--resume"]) == 0
    said = capsys.readouterr()
    assert said.out.strip() == f"pictag classify: {out} is already complete, with the same options: nothing to resume"
    assert (out.read_bytes(), out.stat().st_mtime_ns) == written
    assert not (tmp_path / "out.csv.parts").exists()
    # Other options, or an edited labels file: refused, naming what changed.
    assert main([*args, "--resume", "--top-k", "2"]) == 2
    assert "top_k changed since the run that made it" in capsys.readouterr().err
    labels.write_text("cat\ndog\n")
    assert main([*args, "--resume"]) == 2
    assert "the labels, templates or thresholds changed" in capsys.readouterr().err
    assert (out.read_bytes(), out.stat().st_mtime_ns) == written
