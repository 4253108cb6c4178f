"""Peak memory and time of `pictag serve` on JSON bodies of many small items that are not what the route takes.

Each body (but the last) is just under the default 20 MB `max_upload_bytes`: `labels`, `templates` or a job's
`images` as a list of millions of numbers, objects or lists, millions of short labels as a list or one string, and
a job of as many wrong items as its value bound lets through. This starts the real server (one process: API and
in-process worker, a random tiny CLIP), sends each body, and reads the process's peak resident memory (VmHWM,
reset before each body through /proc/PID/clear_refs) and the time to its answer.

    python benchmarks/serving_hostile_bodies.py
    PYTHONPATH=OLD/src python benchmarks/serving_hostile_bodies.py --size 2000000   # another checkout's server

Before bodies were bounded, a 2 MB body cost the server +1.3 GB: do not send 20 MB ones to such a server (about
+13 GB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _shared import memory_mb

from pictag.testing import save_random_hf_clip

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the serving stack of real processes that the tests start

from serving_stack import free_port, wait_until  # noqa: E402

# Under the default max_upload_bytes (20,000,000), so that the size limit does not answer first.
SIZE = 19_900_000


def items(item: str, size: int) -> str:
    """A JSON list of copies of `item`, about `size` bytes long."""
    return "[" + ",".join([item] * (size // (len(item) + 1))) + "]"


def bodies(size: int) -> dict[str, tuple[str, bytes]]:
    """name: (route, JSON body of about `size` bytes)."""
    short = size - 100

    def classify(field: str, item: str) -> tuple[str, bytes]:
        return "/v1/classify", f'{{"path": "x.jpg", "{field}": {items(item, short)}}}'.encode()

    def job(item: str) -> tuple[str, bytes]:
        return "/v1/jobs", f'{{"labels": "cat,dog", "images": {items(item, short)}}}'.encode()

    return {
        "labels: numbers": classify("labels", "1"),
        "labels: objects": classify("labels", "{}"),
        "labels: short strings": classify("labels", '"ab"'),
        "labels: one long string": classify("labels", '"\\ud83d\\ude00' + "a" * (short - 20) + '"'),
        "labels: 'ab,ab,...'": ("/v1/classify", f'{{"path": "x.jpg", "labels": "{"ab," * (short // 3)}"}}'.encode()),
        "templates: lists": classify("templates", "[]"),
        "job images: numbers": job("1"),
        "job images: bad fields": job('{"path":1}'),
        "top-level list": ("/v1/classify", items("0", size).encode()),
        # Within the default job's bound (5,116 values): as many validation errors as a body can still make.
        "job images: 5,090 numbers": ("/v1/jobs", f'{{"images": {items("1", 2 * 5090)}}}'.encode()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE, help="bytes of each body")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = save_random_hf_clip(Path(tmp) / "clip", seed=0)
        port = free_port()
        command = [sys.executable, "-m", "pictag", "serve", "--model", f"hf:{model}", "--device", "cpu",
                   "--threads", "1", "--labels", "cat,dog", "--port", str(port)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT / "src")), "HF_HUB_OFFLINE": "1"}
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 300, "the server")
            print(f"server RSS after start-up: {memory_mb(server.pid, 'VmRSS'):,.0f} MB; bodies of {args.size:,} bytes")
            for name, (route, body) in bodies(args.size).items():
                Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # peak RSS := current RSS
                before = memory_mb(server.pid, "VmRSS")
                started = time.perf_counter()
                r = httpx.post(f"{url}{route}", content=body, headers={"content-type": "application/json"}, timeout=300)
                seconds = time.perf_counter() - started
                peak = memory_mb(server.pid)
                error = r.json().get("error", "") if r.headers.get("content-type") == "application/json" else r.text
                print(
                    f"  {name:24s} {route:13s} HTTP {r.status_code}  {seconds * 1000:8.1f} ms  "
                    f"peak RSS {peak - before:+,.0f} MB  {len(r.content):>7,} B answer: {error[:70]}"
                )
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
