"""Poisoned requests among good ones, straight onto the queue (past every API check), on both transports.

Whatever a request holds, the worker answers it alone, on its first delivery, and its batch-mates get their
answers: the audit's format-field template made 5 of 6 innocent requests time out in one process, and
dead-lettered an innocent request through Redis.
"""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
import redis
from PIL import Image
from serving_stack import RedisServer

from conftest import jpeg_bytes, photos
from pictag.serve.config import ServeConfig
from pictag.serve.transport.base import Message, ReplyTo
from pictag.serve.transport.memory import InProcessTransport
from pictag.serve.transport.redis import RedisStreamsTransport
from pictag.serve.worker import Worker
from pictag.serve.zero_shot import ZeroShotService

GOOD = {"labels": ["cat", "rocket", "coffee"], "top_k": 2}


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


# What no API check should let through, but a queue may still carry (an older API, another client of Redis).
# The worker checks what the API checks (400); anything else that fails is that request's 500.
POISONS = {
    "format field template": (None, {**GOOD, "templates": ["a {x} {}"]}, 400),
    "attribute template": (None, {**GOOD, "templates": ["{0.__class__}"]}, 400),
    "index template": (None, {**GOOD, "templates": ["{1}"]}, 400),
    "templates not strings": (None, {**GOOD, "templates": [{"a": 1}]}, 400),
    "templates from a file": (None, {**GOOD, "templates": "/etc/passwd"}, 400),
    "labels not a list": (None, {"labels": 5}, 400),
    "top_k not a number": (None, {**GOOD, "top_k": "many"}, 400),
    "params not a mapping": (None, ["labels"], 500),
    "not an image": (b"\x89PNG\r\n\x1a\n garbage", GOOD, 422),
    "a sliver": (png(20000, 1), GOOD, 413),
}


@pytest.fixture(scope="module")
def service(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    service = ZeroShotService(ServeConfig(model=spec, checkpoint=str(checkpoint), device="cpu"))
    service.setup()
    return service


@pytest.fixture(scope="module")
def cat() -> bytes:
    return jpeg_bytes(photos()["chelsea"])


def batch(cat: bytes, poison: str) -> list[Message]:
    """Three good requests, the poison, three more good ones: one batch."""
    image, params, _ = POISONS[poison]
    payloads = [(cat, GOOD)] * 3 + [(image or cat, params)] + [(cat, GOOD)] * 3
    return [Message(ReplyTo(request_id=f"r{i}"), data, p) for i, (data, p) in enumerate(payloads)]


def check(replies: list[dict], poison: str) -> None:
    statuses = [r["status"] for r in replies]
    assert statuses == [200] * 3 + [POISONS[poison][2]] + [200] * 3, (poison, replies[3])
    assert len({str(r["result"]["labels"]) for r in replies if r["ok"]}) == 1  # the same image, the same answer


@pytest.mark.parametrize("poison", POISONS)
def test_a_poisoned_request_spares_its_batch_in_process(service, cat, poison):
    transport = InProcessTransport()
    messages = batch(cat, poison)
    worker = Worker(service, transport, batch_size=len(messages), max_wait_ms=0)

    async def scenario():
        await transport.submit(messages)
        assert worker.step() == len(messages)  # one batch, answered in one step
        return [await transport.wait(m.reply_to.request_id, 5) for m in messages]

    check(asyncio.run(scenario()), poison)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("poison_redis")).start()
    yield server.url
    server.kill()


@pytest.mark.parametrize("poison", ["format field template", "params not a mapping", "a sliver"])
def test_a_poisoned_request_spares_its_batch_through_redis(service, cat, redis_url, poison):
    queue = f"poison-{poison.replace(' ', '-')}"
    client = RedisStreamsTransport(redis_url, queue)
    worker_side = RedisStreamsTransport(redis_url, queue, consumer="w1", visibility_timeout_s=30)
    messages = batch(cat, poison)
    worker = Worker(service, worker_side, batch_size=len(messages), max_wait_ms=50, claim_every_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)

    async def scenario():
        await client.submit(messages)
        thread.start()
        try:
            return await asyncio.gather(*(client.wait(m.reply_to.request_id, 30) for m in messages))
        finally:
            await client.aclose()

    try:
        replies = asyncio.run(scenario())
    finally:
        stop.set()
        thread.join(10)
        worker_side.close()
    check(replies, poison)
    r = redis.Redis.from_url(redis_url)
    # Answered on the first delivery: nothing pending, nothing dead-lettered.
    assert r.xlen(f"{queue}:requests") == 0 and r.xlen(f"{queue}:dead") == 0
