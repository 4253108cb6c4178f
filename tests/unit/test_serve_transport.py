"""The in-process transport and the dynamic batcher, with a real tiny model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conftest import jpeg_bytes, photos
from pictag.serve.config import ServeConfig
from pictag.serve.transport.base import Message, QueueFull, ReplyTo
from pictag.serve.transport.memory import InProcessTransport
from pictag.serve.worker import Worker
from pictag.serve.zero_shot import ZeroShotService

LABELS = ["cat", "rocket", "coffee"]


@pytest.fixture(scope="module")
def service(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    svc = ZeroShotService(ServeConfig(model=spec, checkpoint=str(checkpoint), device="cpu", labels=LABELS))
    svc.setup()
    return svc


@pytest.fixture(scope="module")
def image() -> bytes:
    return jpeg_bytes(photos()["chelsea"])


def message(i: int, image: bytes, **params) -> Message:
    return Message(ReplyTo(request_id=str(i)), image, params)


def test_reply_reaches_the_waiting_client(service, image):
    transport = InProcessTransport()
    worker = Worker(service, transport, batch_size=8, max_wait_ms=0)

    async def scenario():
        await transport.submit([message(1, image, top_k=2)])
        assert worker.step() == 1
        return await transport.wait("1", timeout=5)

    reply = asyncio.run(scenario())
    assert reply["ok"] and reply["status"] == 200
    assert [x["label"] for x in reply["result"]["labels"]] != [] and len(reply["result"]["labels"]) == 2


def test_per_request_labels_share_one_forward_pass(service, image):
    transport = InProcessTransport()
    worker = Worker(service, transport, batch_size=8, max_wait_ms=0)

    async def scenario():
        await transport.submit([message(1, image, labels=["a", "b"]), message(2, image, labels=["x", "y", "z"])])
        assert worker.step() == 2
        return await transport.wait("1", 5), await transport.wait("2", 5)

    first, second = asyncio.run(scenario())
    assert {x["label"] for x in first["result"]["labels"]} == {"a", "b"}
    assert {x["label"] for x in second["result"]["labels"]} == {"x", "y", "z"}
    assert worker._stats["batches"] == 1


def test_full_queue_refuses_all_or_nothing(image):
    transport = InProcessTransport(max_queue=3)
    asyncio.run(transport.submit([message(i, image) for i in range(2)]))
    with pytest.raises(QueueFull):
        asyncio.run(transport.submit([message(i, image) for i in range(2, 4)]))
    assert asyncio.run(transport.health()).depth == 2


def test_batch_closes_when_full(service, image):
    transport = InProcessTransport()
    asyncio.run(transport.submit([message(i, image) for i in range(10)]))
    worker = Worker(service, transport, batch_size=4, max_wait_ms=1000)
    started = time.monotonic()
    assert [len(worker.collect()) for _ in range(2)] == [4, 4]
    assert time.monotonic() - started < 1.0  # full batches never wait


def test_batch_waits_for_late_requests_up_to_max_wait(service, image):
    transport = InProcessTransport()
    worker = Worker(service, transport, batch_size=8, max_wait_ms=600)
    asyncio.run(transport.submit([message(0, image)]))  # fresh: its window is still open
    late = threading.Timer(0.05, lambda: asyncio.run(transport.submit([message(1, image)])))
    late.start()
    batch = worker.collect()
    late.join()
    assert [m.reply_to.request_id for m in batch][:2] == ["0", "1"]

    greedy = Worker(service, transport, batch_size=8, max_wait_ms=0)
    asyncio.run(transport.submit([message(2, image)]))
    threading.Timer(0.3, lambda: asyncio.run(transport.submit([message(3, image)]))).start()
    assert [m.reply_to.request_id for m in greedy.collect()] == ["2"]


def test_second_completion_is_dropped(service, image):
    transport = InProcessTransport()

    async def scenario():
        await transport.create_job("j", 1)
        await transport.submit([Message(ReplyTo(job_id="j", index=0), image, {})])
        (taken,) = transport.receive(1, 1)
        transport.complete([(taken, {"ok": True, "status": 200, "result": {"n": 1}})])
        transport.complete([(taken, {"ok": True, "status": 200, "result": {"n": 2}})])
        return await transport.job("j")

    job = asyncio.run(scenario())
    assert (
        job["done"] == 1
        and job["status"] == "done"
        and job["results"] == [{"ok": True, "status": 200, "result": {"n": 1}}]
    )


def test_abandoned_request_is_claimed_then_dead_lettered(image):
    transport = InProcessTransport(visibility_timeout_s=0.01, max_deliveries=3)

    async def scenario():
        await transport.submit([message(7, image)])
        assert len(transport.receive(1, 1)) == 1  # a worker takes it and dies
        for attempt in (2, 3):
            time.sleep(0.02)
            (claimed,) = transport.claim_stale(10)
            assert claimed.deliveries == attempt  # another worker takes it and dies too
        time.sleep(0.02)
        assert transport.claim_stale(10) == []
        return await transport.wait("7", 1), await transport.health()

    reply, health = asyncio.run(scenario())
    assert reply["status"] == 500 and "dead-letter" in reply["error"]
    assert health.dead_letters == 1 and health.depth == 0


def test_bad_image_gets_a_4xx_reply_and_spares_its_batch(service, image):
    transport = InProcessTransport()
    worker = Worker(service, transport, batch_size=8, max_wait_ms=0)

    async def scenario():
        await transport.submit([message(1, b"not an image"), message(2, image), message(3, image, labels=None)])
        worker.step()
        return [await transport.wait(str(i), 5) for i in (1, 2, 3)]

    bad, good, default_labels = asyncio.run(scenario())
    assert bad["status"] == 422 and "decode" in bad["error"]
    assert good["ok"] and {x["label"] for x in default_labels["result"]["labels"]} == set(LABELS)


def test_prototypes_are_cached_per_label_set(service):
    first = service.head({"labels": ["p", "q"]})
    assert service.head({"labels": ["p", "q"]}) is first
    assert service.head({"labels": ["p", "q"], "templates": ["a photo of {}"]}) is not first


def test_lone_requests_at_low_load_do_not_wait(service, image):
    transport = InProcessTransport()
    worker = Worker(service, transport, batch_size=8, max_wait_ms=1500)
    now = time.time()
    for i in range(3):  # requests 20 s apart: nobody to wait for
        asyncio.run(transport.submit([Message(ReplyTo(request_id=str(i)), image, {}, sent_at=now - 60 + 20 * i)]))
        started = time.monotonic()
        assert len(worker.collect()) == 1
    assert time.monotonic() - started < 1.0  # the first batch waited 1.5 s (no gap known yet), the last did not
    assert min(worker._gaps) == 20


@pytest.mark.parametrize(
    "reply_to", [ReplyTo(request_id="3f2c"), ReplyTo(request_id="3f2c", inbox="a1"), ReplyTo(job_id="9d1e", index=7)]
)
def test_reply_address_round_trips_its_wire_form(reply_to):
    assert ReplyTo.parse(str(reply_to)) == reply_to


@pytest.mark.parametrize("fields", [{}, {"request_id": "r", "job_id": "j", "index": 0}, {"job_id": "j"}])
def test_reply_address_names_a_request_or_a_job_item(fields):
    with pytest.raises(ValueError):
        ReplyTo(**fields)
