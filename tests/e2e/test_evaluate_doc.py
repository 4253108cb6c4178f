"""docs/training.md's offline example and its evaluate section run as written: the generated colours, a tiny run,
`pictag evaluate --model RUN --data`, `classify --report` and the Python twin; each `ls` line's files exist."""

from __future__ import annotations

import json
import re
import shlex

from conftest import ROOT
from pictag.cli.main import main

DOC = (ROOT / "docs" / "training.md").read_text()
SECTIONS = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", DOC, flags=re.S | re.M))
MINE = [SECTIONS["Try it offline in a minute"], SECTIONS["Evaluate a run: `pictag evaluate --data`"]]
BLOCKS = [block for body in MINE for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S)]


def test_offline_example_and_evaluate_section_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for block in BLOCKS:
        python = re.search(r"python - <<'EOF'\n(.*?)\nEOF\n", block, flags=re.S)
        exec(compile(python.group(1), "docs/training.md", "exec"), {})
        for line in block[python.end() :].replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[0] == "pictag":
                assert main(words[1:]) == 0, line
            elif words[0] == "ls":
                listed = line.partition("#")[2].split()
                assert listed and all((tmp_path / words[1] / name).exists() for name in listed), line
    for python in re.findall(r"```python\n(.*?)```", MINE[1], flags=re.S):
        exec(compile(python, "docs/training.md", "exec"), {})
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "runs" / "colours" / "eval" / "report.json").read_text())
    assert f"top-1 {report['top1']:.4f}" in printed and report["images"] == 18
    assert json.loads((tmp_path / "preds.report" / "report.json").read_text())["top1"] == report["top1"]
    assert json.loads((tmp_path / "eval_py" / "report.json").read_text())["top1"] == report["top1"]
