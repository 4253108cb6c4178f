"""Serving under load: the real stack (redis-server, one uvicorn API process, 2 workers, CPU) driven over loopback
at several concurrencies, with dynamic batching and with batch size 1, against the same model run in-process.

    python benchmarks/serving_load.py                 # ~4-5 minutes on 2 cores
    python benchmarks/serving_load.py --seconds 5 --concurrency 1,32

Every level is bounded by --seconds and --max-requests; all traffic stays on 127.0.0.1. The model is
open_clip ViT-S-32 with random weights, built from open_clip's config (no download): a small CLIP whose forward
pass, not HTTP, should dominate a request, as in production. Images are real JPEGs (hymenoptera val set).

The in-process reference runs the worker's own code path (decode + crop + normalise + encode_image + zero-shot
head) on batches of --batch-size with all cores; it is also shown without decoding (model only, on crops made
beforehand), both as one caller with all cores and as 2 caller threads with one torch thread each (the stack's
layout); the higher is the reference. "Added latency" is measured per request: the client's latency minus the
`worker_ms` the worker reports (decode, forward pass and head of the batch holding it). "Added p50 q/a/c" is
q: the queue path (from the API's Server-Timing header: submit to answer, minus worker_ms: Redis both ways,
waiting in the queue and for a batch), a: the whole API (also reading and checking the upload) and c: what the
client sees on top of the model (also the HTTP hop and the client library). q at concurrency 1 is the figure;
the client latency is also shown against the in-process latency of one request, which is noisier on a shared
machine. "cpu ms/req" is the CPU time (user + system, from /proc) per answered request of the API process, both
workers together, redis-server and the load generator: on a machine where they all share the cores, whatever the
other three take is taken from the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the serving stack of real processes that the tests start

import httpx  # noqa: E402
import torch  # noqa: E402
from serving_stack import Stack  # noqa: E402

from pictag.serve.config import ServeConfig  # noqa: E402
from pictag.serve.zero_shot import ZeroShotService  # noqa: E402

DATASET = Path("/work/shared/datasets/hymenoptera/hymenoptera_data/val")
LABELS = ["ant", "bee", "wasp", "butterfly", "flower", "leaf", "spider", "beetle", "fly", "grass"]


def load_images(n: int) -> list[bytes]:
    files = sorted(DATASET.rglob("*.jpg"))[:n] if DATASET.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    import io

    import skimage.data
    from PIL import Image

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def in_process(cfg: ServeConfig, images: list[bytes], batch_size: int, seconds: float, workers: int) -> dict:
    """Throughput of the worker's code path without any serving, and the latency of one request.

    Batched throughput is measured two ways, and the higher counts: one caller with all cores as torch threads,
    and `workers` caller threads with one torch thread each (the stack's layout, without the stack).
    """
    import threading

    service = ZeroShotService(cfg)
    service.setup()
    params = {"labels": LABELS, "top_k": 5}
    batch = [images[i % len(images)] for i in range(batch_size)]
    queries = [service.decode(b, params) for b in batch]
    full = lambda: service.predict([service.decode(b, params) for b in batch])  # noqa: E731
    model_only = lambda: service.predict(queries)  # noqa: E731

    def rate(fn, callers: int) -> float:
        fn()  # warm-up
        counts = [0] * callers
        started = time.perf_counter()

        def loop(i):
            while counts[i] < 2 or time.perf_counter() - started < seconds:
                fn()
                counts[i] += 1

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) * batch_size / (time.perf_counter() - started)

    out = {}
    for name, fn in (("full", full), ("model", model_only)):
        torch.set_num_threads(os.cpu_count() or 1)
        one_caller = rate(fn, 1)
        torch.set_num_threads(cfg.threads or 1)
        out[name] = max(one_caller, rate(fn, workers))
        out[f"{name}_layouts"] = (one_caller, out[name] if out[name] != one_caller else None)
    # The gain batching can bring at most, on this hardware: the model alone at batch 1 in the stack's layout.
    one_crop = lambda: service.predict(queries[:1])  # noqa: E731
    out["model_batch1"] = rate(one_crop, workers) / batch_size
    single = []
    for i in range(30):
        started = time.perf_counter()
        service.predict([service.decode(images[i % len(images)], params)])
        single.append(time.perf_counter() - started)
    out["single_p50_ms"] = statistics.median(single[5:]) * 1000
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams, sending prebuilt requests.

    The load generator shares the cores with the stack it measures, so it must spend as little CPU per request as
    a real client can: httpx's connection pool costs O(connections) per request (about 14 ms of CPU per request
    at concurrency 128 on the development machine, a third of the model's), this costs well under a millisecond.
    Every line of the benchmark uses it.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the answer to `raw`, a whole HTTP/1.1 request."""
        try:
            return await asyncio.wait_for(self._exchange(raw), timeout)
        except BaseException:
            self.close()  # a half-read answer would be read as the next request's
            raise

    async def _exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if "content-length" not in headers:
            raise RuntimeError(f"an answer without Content-Length ({head[0]}): this client reads no other framing")
        body = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def classify_request(host: str, port: int, image: bytes) -> bytes:
    """A whole multipart POST /v1/classify, as `curl -F image=@x.jpg -F labels=... -F top_k=5` sends it."""
    boundary = "pictag-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="labels"\r\n\r\n{",".join(LABELS)}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n5\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode(),
        image,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    body = b"".join(parts)
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary={boundary}"
        f"\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def drive(url: str, images: list[bytes], concurrency: int, max_requests: int, seconds: float) -> dict:
    """A closed loop of `concurrency` clients, each on its own keep-alive connection; stops at max_requests or
    after `seconds`."""
    latencies: list[float] = []
    overheads: list[float] = []
    api_overheads: list[float] = []
    queue_paths: list[float] = []
    first_error: dict[str, str] = {}
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.monotonic() + seconds
    host, port = url.removeprefix("http://").rsplit(":", 1)
    requests = [classify_request(host, int(port), image) for image in images]

    async def one_client():
        nonlocal issued
        connection = Connection(host, int(port))
        try:
            while issued < max_requests and time.monotonic() < deadline:
                raw = requests[issued % len(requests)]
                issued += 1
                started = time.perf_counter()
                try:
                    status, headers, body = await connection.request(raw, 120)
                    key = str(status)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RuntimeError) as exc:
                    status, key, body = 0, type(exc).__name__, str(exc).encode()
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                    answer = json.loads(body)
                    overheads.append(latencies[-1] - answer["worker_ms"] / 1000)
                    api_overheads.append((answer["latency_ms"] - answer["worker_ms"]) / 1000)
                    queue_paths.append(float(re.search(r"queue;dur=([\d.-]+)", headers["server-timing"])[1]) / 1000)
                else:
                    errors[key] = errors.get(key, 0) + 1
                    first_error.setdefault(key, body[:200].decode(errors="replace"))
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "n": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "overhead_p50": percentile(overheads, 0.5),
        "queue_path_p50": percentile(queue_paths, 0.5),
        "api_p50": percentile(api_overheads, 0.5),
        "first_error": first_error,
        "errors": errors,
    }


def percentile(values: list[float], q: float) -> float:
    """In milliseconds."""
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)] * 1000 if values else float("nan")


def cpu_seconds(processes: dict[str, int | list[int]]) -> dict[str, float]:
    """User + system CPU seconds used so far by each named process (or list of processes); NaN without /proc."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def one(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / tick

    return {name: sum(one(p) for p in (pids if isinstance(pids, list) else [pids])) for name, pids in processes.items()}


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^pictag_batch_size_sum ([\d.e+]+)", text, re.M).group(1))
    count = float(re.search(r"^pictag_batch_size_count ([\d.e+]+)", text, re.M).group(1))
    return total, count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="open_clip:ViT-S-32")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--seconds", type=float, default=12.0, help="time bound of each load level")
    p.add_argument("--max-requests", type=int, default=600, help="request bound of each load level")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--threads-per-worker", type=int, default=1)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the stack's children are stopped on `kill`
    levels = [int(c) for c in args.concurrency.split(",")]
    images = load_images(32)
    model = dict(model=args.model, random_weights=True, device="cpu", threads=args.threads_per_worker)
    print(f"model {args.model} (random weights), {len(images)} JPEGs, {os.cpu_count()} CPU cores, loopback only")

    raw = in_process(ServeConfig(**model), images, args.batch_size, min(args.seconds, 8), workers=2)
    for name, what in (("full", "decode + crop + normalise + encode_image + head"), ("model", "encode_image + head")):
        one, many = raw[f"{name}_layouts"]
        many_text = "<= that" if many is None else f"{many:.1f}"
        print(f"in-process, batch {args.batch_size}, {what}: {raw[name]:.1f} img/s "
              f"(1 caller x {os.cpu_count()} torch threads: {one:.1f}; 2 callers x {args.threads_per_worker}: "
              f"{many_text})")  # fmt: skip
    print(f"in-process, batch 1, encode_image + head, 2 callers x {args.threads_per_worker}: "
          f"{raw['model_batch1']:.1f} img/s (batching can gain at most {raw['model'] / raw['model_batch1']:.2f}x "
          "in the model on this CPU)")  # fmt: skip
    print(f"in-process, one request (decode + predict, batch 1, {args.threads_per_worker} thread): "
          f"p50 {raw['single_p50_ms']:.1f} ms")  # fmt: skip

    configs = [
        (f"dynamic (batch {args.batch_size}, wait {args.max_wait_ms:g} ms)", args.batch_size, args.max_wait_ms),
        ("batch size 1", 1, 0.0),
    ]
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="pictag-bench-") as folder:
        serve_cfg = {**model, "labels": LABELS, "max_queue": 10_000, "request_timeout_s": 120}
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with Stack(Path(folder), serve_cfg, env=env) as stack:
            stack.redis.start()
            stack.api = stack._spawn("api", "api")
            for name, batch_size, wait in configs:
                worker_args = ("--batch-size", str(batch_size), "--max-wait-ms", str(wait))
                stack.replace_workers(2, *worker_args, timeout=180)
                asyncio.run(drive(stack.url, images, 4, 16, 30))  # warm-up: prototypes, allocator, connections
                processes = {"api": stack.api.pid, "workers": [w.pid for w in stack.workers],
                             "redis": stack.redis.process.pid, "client": os.getpid()}  # fmt: skip
                for c in levels:
                    before, cpu_before = batch_stats(stack.url), cpu_seconds(processes)
                    r = asyncio.run(drive(stack.url, images, c, args.max_requests, args.seconds))
                    after, cpu_after = batch_stats(stack.url), cpu_seconds(processes)
                    r["batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    cpu = "/".join(f"{(cpu_after[k] - cpu_before[k]) * 1000 / max(r['n'], 1):.1f}" for k in processes)
                    results[(name, c)] = r
                    print(f"  {name:<32} c={c:<4} {r['rps']:7.1f} req/s  p50 {r['p50']:8.1f} ms  "
                          f"p99 {r['p99']:8.1f} ms  added p50 {r['queue_path_p50']:5.1f}/{r['api_p50']:.1f}/{r['overhead_p50']:.1f} ms  mean batch {r['batch']:5.1f}  "
                          f"cpu ms/req {cpu}  n={r['n']}  errors={r['errors'] or 0}",
                          flush=True)  # fmt: skip

    dyn, bs1 = configs[0][0], configs[1][0]
    print("\nsummary")
    if 32 in levels:
        ratio = results[(dyn, 32)]["rps"] / raw["full"]
        print(f"  c=32 dynamic / in-process (with decode): {ratio:.2f}x   "
              f"(/ model only: {results[(dyn, 32)]['rps'] / raw['model']:.2f}x; target >= 0.8x)")  # fmt: skip
    if 1 in levels:
        for name in (dyn, bs1):
            r = results[(name, 1)]
            print(f"  c=1 {name}: p50 added latency of the queue path {r['queue_path_p50']:.1f} ms (target <= 5 ms); "
                  f"of the whole API {r['api_p50']:.1f} ms; as the client sees it {r['overhead_p50']:.1f} ms; "
                  f"client p50 vs in-process one request: {r['p50'] - raw['single_p50_ms']:+.1f} ms")  # fmt: skip
    for c in levels:
        if c >= 8:
            print(
                f"  c={c}: dynamic / batch size 1 throughput = {results[(dyn, c)]['rps'] / results[(bs1, c)]['rps']:.2f}x"
            )
    total_errors = sum(sum(r["errors"].values()) for r in results.values())
    print(f"  errors over all levels: {total_errors}")
    for (name, c), r in results.items():
        for key, text in r["first_error"].items():
            print(f"    {name} c={c}: {key}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
