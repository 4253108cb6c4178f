"""A run killed with -9 frees its output at once: `--resume` right after is accepted, with no retry, even while the
DataLoader workers it forked live on (they notice their parent is gone only seconds later)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from hostile_inputs import CHILD_TIMEOUT
from PIL import Image

from conftest import ROOT, subprocess_env
from pictag.cli.main import main


def test_resume_right_after_kill_9_is_accepted_while_its_workers_live(tmp_path, tiny_hf_clip, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(64):
        Image.new("RGB", (40, 30), (4 * i, 0, 0)).save(images / f"{i:02d}.jpg")
    out = tmp_path / "out.csv"
    command = [str(images), "--labels", "a,b", "--out", str(out), "--model", f"hf:{tiny_hf_clip}", "--device",
               "cpu", "--workers", "2", "--unit-size", "2"]  # fmt: skip
    run = subprocess.Popen(
        [sys.executable, "-m", "pictag", "classify", *command],
        env=subprocess_env(),
        cwd=ROOT,
        start_new_session=True,  # its workers share its process group, so the test can end them all
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not any(out.with_name("out.csv.parts").glob("part-*")):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before its first commit"
            time.sleep(0.01)
        os.kill(run.pid, signal.SIGKILL)  # the driver only, as an OOM killer or a supervisor would
        run.wait(timeout=CHILD_TIMEOUT)
        killed = time.monotonic()
        code = main(["classify", *command, "--resume"])
        accepted = time.monotonic() - killed
        orphans_alive = _group_alive(run.pid)
    finally:
        _end_group(run.pid)
    err = capsys.readouterr().err
    assert code == 0 and "being written" not in err, err
    assert orphans_alive, "the workers died before the resume: this test shows nothing"
    print(f"kill -9 to an accepted --resume: {accepted:.2f} s (the whole resumed run, workers of the dead run alive)")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _end_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
