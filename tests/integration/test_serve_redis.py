"""The production stack as real processes: redis-server, uvicorn API and workers, with a tiny CLIP.

Includes the fault test (kill -9 a worker under load: every request answered exactly once), the Redis restart
test and the dead-letter path (real workers killed while they hold the same request).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import signal
import threading

import httpx
import numpy as np
import pytest
import redis
from PIL import Image
from serving_stack import Stack, wait_until

from conftest import jpeg_bytes, photos, subprocess_env
from pictag.serve.transport.base import TransportUnavailable
from pictag.serve.transport.redis import RedisStreamsTransport

LABELS = "cat,rocket,coffee,astronaut"


@pytest.fixture(scope="module")
def cat() -> bytes:
    return jpeg_bytes(photos()["chelsea"])


def serve_config(tiny_hf_clip, **overrides) -> dict:
    return {"model": f"hf:{tiny_hf_clip}", "device": "cpu", "threads": 1, "labels": LABELS, "max_wait_ms": 5,
            "batch_size": 4, "visibility_timeout_s": 2.0, "request_timeout_s": 60, **overrides}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tiny_hf_clip, tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack"), serve_config(tiny_hf_clip), env=subprocess_env()) as s:
        s.start(workers=2)
        yield s


def classify(url: str, image: bytes, **data) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", files={"image": ("x.jpg", image)}, data=data, timeout=90)


def test_classify_and_job_through_redis(stack, cat):
    r = classify(stack.url, cat, labels="cat,dog", top_k="2")
    assert r.status_code == 200, r.text
    assert {x["label"] for x in r.json()["labels"]} == {"cat", "dog"}
    default = classify(stack.url, cat).json()
    assert {x["label"] for x in default["labels"]} <= set(LABELS.split(","))

    files = [("image", (f"{i}.jpg", cat)) for i in range(6)]
    job = httpx.post(f"{stack.url}/v1/jobs", files=files, data={"top_k": "1"}, timeout=30).json()
    state = wait_until(lambda: (j := httpx.get(f"{stack.url}{job['url']}").json())["status"] == "done" and j, 60,
                       "the job")  # fmt: skip
    assert state["done"] == 6 and state["failed"] == 0 and all(len(x["labels"]) == 1 for x in state["results"])

    metrics = httpx.get(f"{stack.url}/metrics").text
    assert "pictag_live_workers 2.0" in metrics and "pictag_batch_size_count" in metrics


def test_kill_9_one_of_two_workers_under_load(stack, cat):
    """Every request is answered exactly once although a worker dies holding requests."""
    n = 160
    r = redis.Redis.from_url(stack.redis.url)
    victim = stack.workers[0]
    prefix = "pictag"
    answered_before = len(list(r.scan_iter(f"{prefix}:answered:r:*", count=1000)))

    def send(i: int) -> tuple[int, int, str]:
        resp = classify(stack.url, cat, labels=f"cat,dog,n{i}")
        labels = {x["label"] for x in resp.json().get("labels", [])}
        return i, resp.status_code, resp.json().get("id") if f"n{i}" in labels else "wrong answer"

    killed_holding = {}

    def kill_when_busy():
        def victim_pending():
            for c in r.xinfo_consumers(f"{prefix}:requests", "workers"):
                if f"-{victim.pid}-".encode() in c["name"] and c["pending"] > 0:
                    return c["pending"]
            return 0

        # Freeze the victim while it holds requests, so what it holds cannot change before the kill lands.
        while True:
            wait_until(victim_pending, 60, "the victim holding requests", every=0.002)
            os.kill(victim.pid, signal.SIGSTOP)
            held = victim_pending()
            if held:
                break
            os.kill(victim.pid, signal.SIGCONT)
        killed_holding["pending"] = held
        stack.kill_worker(0)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(n)))
    killer.join(70)

    assert victim.returncode == -9 and killed_holding["pending"] > 0
    assert sorted(i for i, _, _ in results) == list(range(n))
    assert [s for _, s, _ in results] == [200] * n
    ids = [x for _, _, x in results]
    assert "wrong answer" not in ids and len(set(ids)) == n
    # Exactly once on the server side too: one answer marker per request, and no reply left unread.
    answered = len(list(r.scan_iter(f"{prefix}:answered:r:*", count=1000))) - answered_before
    assert answered == n
    assert all(r.llen(key) == 0 for key in r.scan_iter(f"{prefix}:inbox:*"))
    assert r.xlen(f"{prefix}:requests") == 0

    # The survivor claimed what the victim held; its counters reach Redis with its next heartbeat.
    def claimed() -> bool:
        return float(r.hget(f"{prefix}:stats", "claimed") or 0) >= killed_holding["pending"]

    wait_until(claimed, 15, "the claim counted")


def test_redis_restart(stack, cat):
    alive = sum(w.poll() is None for w in stack.workers)
    assert classify(stack.url, cat).status_code == 200
    stack.redis.kill()
    down = classify(stack.url, cat)
    assert down.status_code == 503 and down.headers["retry-after"] and "unavailable" in down.json()["error"]
    assert httpx.get(f"{stack.url}/readyz").status_code == 503
    assert httpx.get(f"{stack.url}/healthz").status_code == 200
    stack.redis.start()  # same port, empty: workers must recreate the consumer group by themselves
    stack.wait_ready(alive, timeout=30)
    assert classify(stack.url, cat).status_code == 200


@pytest.fixture(scope="module")
def bare_api(tiny_hf_clip, tmp_path_factory):
    """An API with no worker, so that what it queues stays queued."""
    cfg = serve_config(tiny_hf_clip, max_queue=3, request_timeout_s=30)
    with Stack(tmp_path_factory.mktemp("bare"), cfg, env=subprocess_env()) as s:
        s.start(workers=0)
        yield s


def test_request_that_kills_its_workers_is_dead_lettered(tiny_hf_clip, tmp_path_factory):
    """Real worker processes die (kill -9) while they hold the same request, until it is dead-lettered."""
    # A 16-megapixel PNG keeps a worker busy for about a second, long enough to catch it holding the request.
    gradient = np.tile(np.linspace(0, 255, 4000, dtype=np.uint8), (4000, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(buffer, "PNG")
    cfg = serve_config(tiny_hf_clip, visibility_timeout_s=1.0, max_deliveries=2)
    with Stack(tmp_path_factory.mktemp("doomed"), cfg, env=subprocess_env()) as s:
        s.start(workers=0)
        r = redis.Redis.from_url(s.redis.url)
        box = {}
        sender = threading.Thread(target=lambda: box.update(r=classify(s.url, buffer.getvalue())))
        sender.start()

        def times_delivered() -> int:
            pending = r.xpending_range("pictag:requests", "workers", "-", "+", 10)
            return pending[0]["times_delivered"] if pending else 0

        for delivery in (1, 2):  # each new worker takes the request (read, then claimed), and dies holding it
            s.add_worker()
            wait_until(lambda d=delivery: times_delivered() == d, 90, f"delivery {delivery} of the request")
            s.kill_worker(-1)
        s.add_worker()  # claims it a third time, above max_deliveries: dead-lettered instead of run
        sender.join(90)
        assert box["r"].status_code == 500 and "stopped 2 worker(s)" in box["r"].json()["error"]
        assert r.xlen("pictag:dead") == 1 and r.xlen("pictag:requests") == 0


def test_full_queue_answers_503_with_retry_after(bare_api, cat):
    files = [("image", (f"{i}.jpg", cat)) for i in range(3)]
    assert httpx.post(f"{bare_api.url}/v1/jobs", files=files, timeout=30).status_code == 202
    full = httpx.post(f"{bare_api.url}/v1/jobs", files=files[:1], timeout=30)
    assert full.status_code == 503 and full.headers["retry-after"] == "1" and "full" in full.json()["error"]
    ready = httpx.get(f"{bare_api.url}/readyz")
    assert ready.status_code == 503 and ready.json()["queue_depth"] == 3


def test_async_transport_maps_outage_to_unavailable():
    from serving_stack import free_port

    transport = RedisStreamsTransport(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(TransportUnavailable):
        asyncio.run(transport.health())
