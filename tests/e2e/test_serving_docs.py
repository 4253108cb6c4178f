"""The quick start of docs/serving.md runs as written: its serve.yaml, `pictag serve`, the curl calls and the
Python client. Only the port changes (a free one instead of 8000), and $PICTAG_MODEL names a tiny local model.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from serving_stack import free_port, wait_until

from conftest import ROOT, jpeg_bytes, photos, subprocess_env

DOC = (ROOT / "docs" / "serving.md").read_text()
QUICK_START = DOC.split("## Quick start", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def served(tiny_hf_clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / "cat.jpg").write_bytes(jpeg_bytes(photos()["chelsea"]))
    port = free_port()
    bash = re.search(r"```bash\n(.*?)```", QUICK_START, re.S)[1]
    config = re.search(r"cat > serve\.yaml <<'EOF'\n(.*?)\nEOF", bash, re.S)[1]
    (folder / "serve.yaml").write_text(f"{config}\nport: {port}\n")
    env = subprocess_env() | {"PICTAG_MODEL": f"hf:{tiny_hf_clip}"}
    start = next(line for line in bash.splitlines() if line.startswith("pictag serve"))
    argv = [sys.executable, "-m", "pictag", *start.split("&")[0].split()[1:]]
    log = open(folder / "serve.log", "ab")
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 90, f"pictag serve ({folder})")
        yield folder, port, bash, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def test_quick_start_curl(served):
    folder, port, bash, env = served
    for line in bash.splitlines():
        if line.startswith("curl"):
            done = subprocess.run(line.replace(":8000", f":{port}"), shell=True, cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stderr
    assert '"label":"cat"' in done.stdout or '"label":"dog"' in done.stdout


def test_python_client(served):
    folder, port, _, env = served
    block = re.search(r"```python\n(import httpx.*?)```", DOC, re.S)[1].replace(":8000", f":{port}")
    done = subprocess.run([sys.executable, "-c", block], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "'label':" in done.stdout
