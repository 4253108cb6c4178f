"""The commands and Python of docs/embeddings.md run as written ($PICTAG_MODEL points at a tiny local model).

They run in this process (`main(argv)`, `exec`), one interpreter start instead of one per example.
"""

from __future__ import annotations

import re
import shlex

from conftest import ROOT, jpeg_bytes, photos, write_tar
from pictag.cli.main import main

BLOCKS = re.findall(r"```(\w+)\n(.*?)```", (ROOT / "docs" / "embeddings.md").read_text(), flags=re.S)
COMMANDS = [line for lang, body in BLOCKS if lang == "bash" for line in body.splitlines() if line.startswith("pictag ")]
PYTHON = [body for lang, body in BLOCKS if lang == "python"]
TRUTH = {"chelsea": "cat", "astronaut": "astronaut", "coffee": "coffee", "rocket": "rocket", "camera": "camera"}


def test_doc_commands_then_python_run(tmp_path, tiny_hf_clip, monkeypatch, capsys):
    images = {f"{name}.jpg": jpeg_bytes(img.resize((96, 64))) for name, img in photos().items()}
    (tmp_path / "data").mkdir()
    write_tar(tmp_path / "data" / "zip1.tar", images)
    (tmp_path / "imagenet1k.txt").write_text("tabby cat\nastronaut\nespresso\nmissile\ncamera\nsports car\n")
    (tmp_path / "labels.txt").write_text("\n".join(sorted(set(TRUTH.values()))) + "\n")
    (tmp_path / "labelled.csv").write_text("key,label\n" + "".join(f"{k}.jpg,{v}\n" for k, v in TRUTH.items()))
    (tmp_path / "query.jpg").write_bytes(images["rocket.jpg"])
    monkeypatch.setenv("PICTAG_MODEL", f"hf:{tiny_hf_clip}")
    monkeypatch.chdir(tmp_path)

    assert len(COMMANDS) >= 8 and len(PYTHON) >= 3
    for command in COMMANDS:
        assert main(shlex.split(command, comments=True)[1:]) == 0, command
    assert main(["search", "emb/", "--image", "query.jpg", "--top-k", "1", "--paths"]) == 0
    assert "tar://rocket.jpg::" in capsys.readouterr().out
    for block in PYTHON:
        exec(compile(block, "docs/embeddings.md", "exec"), {})
    for name in ("results.parquet", "results.csv", "calib.yaml", "calib.coverage.png", "calibrated.csv"):
        assert (tmp_path / name).is_file(), name
