"""The commands of docs/multimodal.md run as written, on synthetic products, with $PICTAG_MODEL a tiny CLIP."""

from __future__ import annotations

import csv
import json
import re
import shlex
import sys

import pytest

from conftest import ROOT
from pictag.cli.main import main

sys.path.insert(0, str(ROOT / "tests"))
from product_data import write_products  # noqa: E402

DOC = ROOT / "docs" / "multimodal.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
COMMANDS = [line for lang, body in BLOCKS if lang == "bash" for line in body.splitlines() if line.startswith("pictag ")]


@pytest.fixture
def workdir(tmp_path, tiny_hf_clip, monkeypatch):
    """data/train.csv, data/test.csv (no label column) and data/images/, as the doc names them."""
    root = write_products(tmp_path / "data", per_class=5)
    rows = list(csv.DictReader(open(root / "products.csv", newline="")))
    (root / "products.csv").rename(root / "train.csv")
    with open(root / "test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "title"])
        writer.writeheader()
        writer.writerows({"id": r["id"], "title": r["title"]} for r in rows[::3])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PICTAG_MODEL", f"hf:{tiny_hf_clip}")
    return tmp_path


def test_the_commands_of_the_doc_run_as_written(workdir):
    assert len(COMMANDS) == 5
    for command in COMMANDS:
        assert main([*shlex.split(command)[1:], "--device", "cpu", "--workers", "0"]) == 0, command
    cv = json.loads((workdir / "runs" / "mm-s2" / "cv.json").read_text())
    assert len(cv["folds"]) == 5 and 0 <= cv["top1_mean"] <= 1
    assert (workdir / "predictions.csv").read_text().startswith('"id","label","score","label_1"')
    assert (workdir / "submission.csv").read_text().splitlines()[0] == '"id","label"'
    assert (workdir / "runs" / "mm-shared" / "fold2" / "best").is_dir()
