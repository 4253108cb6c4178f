"""The worker over any `Service`: per-item error replies, and one failing item never fails its batch-mates."""

from __future__ import annotations

import asyncio

import pytest

from pictag.data.decode import DecodeError
from pictag.errors import PictagError
from pictag.serve.config import ServeConfig
from pictag.serve.service import Service, create_service
from pictag.serve.transport.base import Message, ReplyTo
from pictag.serve.transport.memory import InProcessTransport
from pictag.serve.worker import Worker


class Upper(Service[str, str]):
    """Upper-cases text; "undecodable" and "bad-options" fail in decode, "poison" fails any batch holding it."""

    def __init__(self):
        super().__init__(ServeConfig(model="none"))
        self.batches: list[list[str]] = []

    def setup(self) -> None:
        pass

    def decode(self, image: bytes, params: dict) -> str:
        text = image.decode()
        if text == "undecodable":
            raise DecodeError("not text")
        if text == "bad-options":
            raise PictagError("bad options")
        return text

    def predict(self, batch: list[str]) -> list[str]:
        self.batches.append(batch)
        if "poison" in batch:
            raise RuntimeError("the model chokes")
        return [text.upper() for text in batch]

    def encode(self, output: str) -> dict:
        return {"text": output}


def answers(texts: list[str]) -> tuple[list[dict], Upper]:
    service, transport = Upper(), InProcessTransport()
    worker = Worker(service, transport, batch_size=len(texts), max_wait_ms=0)

    async def scenario():
        await transport.submit([Message(ReplyTo(request_id=str(i)), t.encode(), {}) for i, t in enumerate(texts)])
        assert worker.step() == len(texts)
        return [await transport.wait(str(i), 5) for i in range(len(texts))]

    return asyncio.run(scenario()), service


def test_each_request_gets_its_own_reply():
    replies, service = answers(["a", "undecodable", "b", "bad-options"])
    assert [r["status"] for r in replies] == [200, 422, 200, 400]
    assert replies[0]["result"]["text"] == "A" and "worker_ms" in replies[0]["result"]
    assert service.batches == [["a", "b"]]  # refused requests never reach the model


def test_a_failing_item_is_retried_alone_and_spares_its_batch():
    replies, service = answers(["a", "poison", "b"])
    assert [r["status"] for r in replies] == [200, 500, 200]
    assert [r["result"]["text"] for r in (replies[0], replies[2])] == ["A", "B"]
    assert service.batches == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]


def test_an_unknown_service_is_refused_naming_the_known_ones():
    with pytest.raises(PictagError, match="unknown service 'nope': use one of zero-shot"):
        create_service(ServeConfig(service="nope"))
