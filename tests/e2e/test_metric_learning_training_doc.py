"""The offline example of docs/metric-learning.md's training section runs as written: generated objects, splits, an arcface
run, evaluate, embed, search and a kNN classify against the run's own gallery (in this process, `main(argv)`)."""

from __future__ import annotations

import csv
import json
import re
import shlex

from conftest import ROOT
from pictag.cli.main import main

DOC = (ROOT / "docs" / "metric-learning.md").read_text()
TRAINING = DOC[DOC.index("## Training: ") : DOC.index("## Evaluate: ")]
TRY = TRAINING[TRAINING.index("### Try it offline") :]
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", TRY, flags=re.S)
PYTHON = [body for lang, body in BLOCKS if lang == "python"]
COMMANDS = [line for lang, body in BLOCKS if lang == "bash" for line in body.splitlines() if line.startswith("pictag ")]


def test_the_offline_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert len(PYTHON) == 1 and len(COMMANDS) == 6
    exec(compile(PYTHON[0], "docs/metric-learning.md", "exec"), {})
    for command in COMMANDS:
        assert main(shlex.split(command)[1:]) == 0, command
    with open(tmp_path / "runs/objects/metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]
    report = json.loads((tmp_path / "runs/objects/eval/report.json").read_text())
    assert report["queries"] == 24 and 0 <= report["recall@1"] <= 1 and "recall@5" in report
    with open(tmp_path / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 96
    assert "c2/c2o3_1.jpg" in capsys.readouterr().out
