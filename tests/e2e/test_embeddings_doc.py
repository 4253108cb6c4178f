"""The commands and Python of docs/embeddings.md run as written ($PICTAG_MODEL points at a tiny local model)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, jpeg_bytes, photos, subprocess_env, write_tar

BLOCKS = re.findall(r"```(\w+)\n(.*?)```", (ROOT / "docs" / "embeddings.md").read_text(), flags=re.S)
COMMANDS = [line for lang, body in BLOCKS if lang == "bash" for line in body.splitlines() if line.startswith("pictag ")]
PYTHON = [body for lang, body in BLOCKS if lang == "python"]
TRUTH = {"chelsea": "cat", "astronaut": "astronaut", "coffee": "coffee", "rocket": "rocket", "camera": "camera"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_hf_clip):
    """The files the doc names: data/zip1.tar, imagenet1k.txt, labels.txt, labelled.csv, query.jpg."""
    root = tmp_path_factory.mktemp("embeddings-doc")
    images = {f"{name}.jpg": jpeg_bytes(img.resize((96, 64))) for name, img in photos().items()}
    (root / "data").mkdir()
    write_tar(root / "data" / "zip1.tar", images)
    (root / "imagenet1k.txt").write_text("tabby cat\nastronaut\nespresso\nmissile\ncamera\nsports car\n")
    (root / "labels.txt").write_text("\n".join(sorted(set(TRUTH.values()))) + "\n")
    (root / "labelled.csv").write_text("key,label\n" + "".join(f"{k}.jpg,{v}\n" for k, v in TRUTH.items()))
    (root / "query.jpg").write_bytes(images["rocket.jpg"])
    env = subprocess_env() | {"PICTAG_MODEL": f"hf:{tiny_hf_clip}", "PICTAG_CACHE": str(root / ".cache")}
    return root, env


def test_doc_commands_then_python_run(workdir):
    root, env = workdir
    assert len(COMMANDS) >= 8 and len(PYTHON) >= 3
    for command in COMMANDS:
        argv = [sys.executable, "-m", "pictag", *shlex.split(command, comments=True)[1:]]
        done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert (
        "tar://rocket.jpg::"
        in subprocess.run(
            [sys.executable, "-m", "pictag", "search", "emb/", "--image", "query.jpg", "--k", "1", "--paths"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    )
    for block in PYTHON:
        done = subprocess.run([sys.executable, "-c", block], cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{block}\n{done.stderr}"
    for name in ("results.parquet", "results.csv", "calib.yaml", "calib.coverage.png", "calibrated.csv"):
        assert (root / name).is_file(), name
