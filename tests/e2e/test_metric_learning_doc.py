"""The commands and Python of docs/metric-learning.md's splits, evaluate and gallery sections run as written.

$PICTAG_MODEL points at a tiny random CLIP; `data/` and `new/` are folders of colour classes with {ID}_{view} names.
The training section belongs to the arcface task and is run by its own test.
"""

from __future__ import annotations

import json
import re
import shlex

from conftest import ROOT
from pictag.cli.main import main
from pictag.testing import save_colour_objects

DOC = (ROOT / "docs" / "metric-learning.md").read_text()
SECTIONS = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", DOC, flags=re.S | re.M))
MINE = [
    body for title, body in SECTIONS.items() if title.split(":")[0] in ("Splits", "Evaluate", "Classify with a gallery")
]
BLOCKS = [block for body in MINE for block in re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)]
COMMANDS = [line for lang, body in BLOCKS if lang == "bash" for line in body.splitlines() if line.startswith("pictag ")]
PYTHON = [body for lang, body in BLOCKS if lang == "python"]


def test_doc_commands_and_python_run(tmp_path, tiny_hf_clip, monkeypatch, capsys):
    save_colour_objects(tmp_path / "data", objects=5)
    save_colour_objects(tmp_path / "new", objects=1, seed=1)
    truth = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted((tmp_path / "new").glob("*/*.png"))]
    (tmp_path / "truth.csv").write_text("key,label\n" + "\n".join(truth) + "\n")
    monkeypatch.setenv("PICTAG_MODEL", f"hf:{tiny_hf_clip}")
    monkeypatch.chdir(tmp_path)

    assert len(MINE) == 3 and len(COMMANDS) >= 12 and PYTHON
    for command in COMMANDS:
        assert main(shlex.split(command, comments=True)[1:]) == 0, command
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert (report["queries"], report["gallery"]) == (4 * 3, 4 * 4 * 3)
    for name in ("splits_open.csv", "splits_two.csv", "predictions.csv", "confident.csv", "calibrated.csv"):
        assert (tmp_path / name).is_file(), name
    for block in PYTHON:
        exec(compile(block, "docs/metric-learning.md", "exec"), {})
    assert "{1:" in capsys.readouterr().out
