"""Peak memory and time of `pictag serve` on long thin images, against a normal photo.

A 143-byte 20000x1 PNG passes `max_pixels`; resized to the model's 224-pixel short side it became 4,480,000 x 224
(3 GB) in the worker. `max_aspect_ratio` now refuses it from its header. This starts the real server (one process:
API and in-process worker, a random tiny CLIP with the real 224-pixel preprocessing), sends each image, and reads
the process's peak resident memory (VmHWM) after each answer.

    python benchmarks/serving_thin_images.py             # the limit as shipped (50:1)
    python benchmarks/serving_thin_images.py --before     # no aspect limit: how the audit's cases behaved

`--before` only sends 10000x1 (about +2 GB); add `--huge` for 20000x1 (about +4 GB).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import skimage.data
from _shared import memory_mb
from PIL import Image

from pictag.testing import save_random_hf_clip

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the serving stack of real processes that the tests start

from serving_stack import free_port, wait_until  # noqa: E402


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", action="store_true", help="serve without the aspect-ratio limit")
    parser.add_argument("--huge", action="store_true", help="with --before, also send 20000x1 (+4 GB)")
    args = parser.parse_args()

    photo = Image.fromarray(skimage.data.chelsea())
    cases = {"photo 451x300 JPEG": encode(photo, "JPEG")}
    sizes = (
        [(10000, 1)] + ([(20000, 1)] if args.huge else [])
        if args.before
        else [(20000, 1), (1, 20000), (10000, 1), (5100, 100)]
    )
    cases |= {f"{w}x{h} PNG": encode(Image.new("L", (w, h)), "PNG") for w, h in sizes}

    with tempfile.TemporaryDirectory() as tmp:
        model = save_random_hf_clip(Path(tmp) / "clip", seed=0)
        port = free_port()
        command = [sys.executable, "-m", "pictag", "serve", "--model", f"hf:{model}", "--device", "cpu",
                   "--threads", "1", "--labels", "cat,dog", "--port", str(port)]  # fmt: skip
        if args.before:
            command += ["--max-aspect-ratio", "1e9"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 300, "the server")
            post = lambda data: httpx.post(f"{url}/v1/classify", files={"image": ("x", data)}, timeout=300)  # noqa: E731
            post(cases["photo 451x300 JPEG"])  # warm: the model, the label set's prototypes
            print(f"{'before' if args.before else 'after'} (max_aspect_ratio {'off' if args.before else '50'}), "
                  f"server peak RSS after start-up and one photo: {memory_mb(server.pid):,.0f} MB")  # fmt: skip
            for name, data in cases.items():
                before = memory_mb(server.pid)
                started = time.perf_counter()
                r = post(data)
                seconds = time.perf_counter() - started
                after = memory_mb(server.pid)
                answer = r.json().get("error", "")[:70] or "classified"
                print(
                    f"  {name:20s} {len(data):>6,} B  HTTP {r.status_code}  {seconds * 1000:8.1f} ms  "
                    f"peak RSS {after:7,.0f} MB (+{after - before:,.0f})  {answer}"
                )
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
