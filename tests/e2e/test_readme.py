"""The commands and Python of the README and the zero-shot docs run as written.

$PICTAG_MODEL points the default model at a tiny local one; everything else is verbatim. Each doc's examples run in
order, as its reader runs them; the docs run side by side, each in its own processes.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from conftest import ROOT, jpeg_bytes, photos, subprocess_env, write_tar

DOCS = [ROOT / "README.md", ROOT / "docs" / "zero-shot.md", ROOT / "docs" / "models.md"]
BLOCKS = {doc.name: re.findall(r"```(\w+)\n(.*?)```", doc.read_text(), flags=re.S) for doc in DOCS}
COMMANDS = {
    doc: [line for lang, body in blocks if lang == "bash" for line in body.splitlines() if line.startswith("pictag ")]
    for doc, blocks in BLOCKS.items()
}
PYTHON = {doc: [body for lang, body in blocks if lang == "python"] for doc, blocks in BLOCKS.items()}
_shown = set()
# A command that two docs show verbatim runs once, in the first of them.
COMMANDS = {doc: [c for c in commands if not (c in _shown or _shown.add(c))] for doc, commands in COMMANDS.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_hf_clip):
    """The files the README's examples name: data/zip1.tar, photos/, labels.txt, shards/000000..000009.tar."""
    root = tmp_path_factory.mktemp("readme")
    images = {f"{name}.jpg": jpeg_bytes(img.resize((96, 64))) for name, img in photos().items()}
    (root / "data").mkdir()
    write_tar(root / "data" / "zip1.tar", images)
    (root / "photos").mkdir()
    for name, data in images.items():
        (root / "photos" / name).write_bytes(data)
    (root / "labels.txt").write_text("cat\nastronaut\ncoffee\n")
    (root / "examples").symlink_to(ROOT / "examples")  # the files the repository ships
    (root / "shards").mkdir()
    for shard in range(10):
        write_tar(
            root / "shards" / f"{shard:06d}.tar",
            {f"s{shard}_{i}.jpg": jpeg_bytes(Image.new("RGB", (40, 30), (i * 40, 9, 9))) for i in range(3)},
        )
    env = subprocess_env() | {"PICTAG_MODEL": f"hf:{tiny_hf_clip}", "PICTAG_CACHE": str(root / ".cache")}
    return root, env


def _side_by_side(steps: dict[str, list[str]], run) -> None:
    """`run` each doc's steps in order, two docs at a time: a step is a process of its own, so two use both cores."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda doc: [run(step) for step in steps[doc]], steps))


def test_readme_has_examples():
    assert sum(map(len, COMMANDS.values())) >= 5 and any(PYTHON.values())


def test_readme_commands_run(workdir):
    root, env = workdir

    def run(command: str) -> None:
        argv = [sys.executable, "-m", "pictag", *shlex.split(command, comments=True)[1:]]
        done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr}"

    _side_by_side(COMMANDS, run)
    assert (root / "results.csv").is_file() and (root / "out.parquet").is_file()


def test_readme_python_runs(workdir):
    root, env = workdir

    def run(block: str) -> None:
        done = subprocess.run(
            [sys.executable, "-c", block], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{block}\n{done.stderr}"

    _side_by_side(PYTHON, run)


def test_pictag_help_is_instant_and_lists_commands():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pictag", "--help"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "classify" in done.stdout
    assert not re.search(
        r"\| +(torch|transformers|open_clip|pyarrow|PIL|numpy|yaml|fsspec)$", done.stderr, flags=re.M
    ), "heavy import on --help"
    # Building the parser imports no config module: each command's options are added when it parses.
    assert not re.search(r"\| +pictag\.(data|models|pipeline|train|serve|store|config)\b", done.stderr), (
        "--help imports a config module"
    )
