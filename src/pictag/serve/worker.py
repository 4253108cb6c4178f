"""The worker: takes requests off a transport in dynamic batches and answers each one through a `Service`.

It knows nothing of the model: it decodes each request, predicts on the batch and encodes each output, and turns
every failure into that request's error reply.

A batch closes when it holds `batch_size` requests or when `max_wait_ms` has passed since its first request
arrived, whichever comes first; `max_wait_ms=0` takes whatever is queued and runs it at once.

The window is counted from the first request's arrival in the queue, so a request that already waited while the
worker was busy is not held any longer. And waiting only pays when more requests are on their way: the worker
keeps the gaps between recent requests (from the times the API queued them) and holds a batch open only while at
least a quarter of them are shorter than `max_wait_ms`. A lone request at low load runs at once; bursts (as when a
batch's clients all send their next request) are batched.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import uuid

from pictag.data.decode import DecodeError
from pictag.errors import PictagError
from pictag.serve.service import Service
from pictag.serve.transport.base import Message, Transport, error_reply

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HEARTBEAT_S = 1.0
IDLE_POLL_S = 0.5
_FAILED = object()  # the output of an item the model failed on


def worker_name() -> str:
    """A consumer name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs a service over dynamic batches from a transport until stopped.

    Args:
        service: The model side (already set up).
        transport: Where requests come from and answers go.
        batch_size: Most requests per forward pass.
        max_wait_ms: Longest the first request of a batch waits for company.
        name: Consumer name, reported in heartbeats.
        claim_every_s: How often to look for requests abandoned by dead workers.
    """

    def __init__(
        self,
        service: Service,
        transport: Transport,
        batch_size: int = 32,
        max_wait_ms: float = 10.0,
        name: str | None = None,
        claim_every_s: float = 1.0,
    ):
        self.service = service
        self.transport = transport
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.name = name or worker_name()
        self.claim_every_s = claim_every_s
        self._backlog: list[Message] = []
        self._stats: dict[str, float] = {}
        self._next_claim = 0.0
        self._next_heartbeat = 0.0
        self._last_sent = 0.0
        self._gaps: collections.deque[float] = collections.deque(maxlen=16)

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; transport outages are waited out with backoff, never fatal."""
        backoff = 0.1
        while not stop.is_set():
            try:
                self.step()
                backoff = 0.1
            except Exception as exc:  # a worker must outlive Redis restarts and bugs in one batch
                log.warning("worker %s: %s: %s (retrying in %.1fs)", self.name, type(exc).__name__, exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        try:
            self.transport.retire(self.name)
        except Exception:  # the queue may be gone already; heartbeats expire on their own
            pass

    def step(self) -> int:
        """Heartbeat and claim when due, then collect and answer one batch; returns its size."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            stats, self._stats = self._stats, {}
            self.transport.heartbeat(self.name, stats)
            self._next_heartbeat = now + HEARTBEAT_S
        if now >= self._next_claim:
            claimed = self.transport.claim_stale(self.batch_size)
            if claimed:
                self._count("claimed", len(claimed))
                self._backlog += claimed
            self._next_claim = now + self.claim_every_s
        batch = self.collect()
        if batch:
            self.transport.complete(self.answer(batch))
        return len(batch)

    def collect(self) -> list[Message]:
        """Up to batch_size messages: block for the first, then wait at most max_wait_ms for the rest."""
        batch, self._backlog = self._backlog[: self.batch_size], self._backlog[self.batch_size :]
        if not batch:
            timeout = min(IDLE_POLL_S, max(self._next_heartbeat - time.monotonic(), 0.01))
            batch = self.transport.receive(self.batch_size, timeout)
            if not batch:
                return []
        self._observe(batch)
        if self._gaps and sorted(self._gaps)[len(self._gaps) // 4] >= self.max_wait_s:
            return batch
        # Clamped, since sent_at comes from the API machine's clock.
        age = min(max(time.time() - min(m.sent_at for m in batch), 0.0), self.max_wait_s)
        close_at = time.monotonic() + self.max_wait_s - age
        while len(batch) < self.batch_size:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            more = self.transport.receive(self.batch_size - len(batch), remaining)
            self._observe(more)
            batch += more
        return batch

    def _observe(self, messages: list[Message]) -> None:
        for sent in sorted(m.sent_at for m in messages if m.deliveries == 1):
            if self._last_sent and sent >= self._last_sent:
                self._gaps.append(sent - self._last_sent)
            self._last_sent = max(self._last_sent, sent)

    def answer(self, batch: list[Message]) -> list[tuple[Message, dict]]:
        """Decode, predict and encode a batch; every message gets exactly one reply, success or error."""
        service = self.service
        replies: list[tuple[Message, dict]] = []
        ready, items = [], []
        batch_started = time.perf_counter()
        now = time.time()
        for message in batch:
            if message.deadline and now > message.deadline:
                replies.append((message, error_reply(504, "the request waited in the queue past its timeout")))
                self._count("expired")
                continue
            try:
                items.append(service.decode(message.image, message.params))
            except PictagError as exc:
                replies.append((message, error_reply(400, str(exc))))
                self._count("errors_request")
                continue
            except DecodeError as exc:
                replies.append((message, _decode_error_reply(exc)))
                self._count("errors_decode")
                continue
            except Exception:  # a bug or an input no check foresaw: this request's error, never its batch's
                log.exception("worker %s: the service failed to decode one request", self.name)
                replies.append((message, error_reply(500, "the service failed on this request (see the worker's log)")))
                self._count("errors_request")
                continue
            ready.append(message)
        if ready:
            started = time.perf_counter()
            outputs = self._predict(items)
            self._count("predict_seconds", time.perf_counter() - started)
            self._count("batches")
            self._count("batch_size_sum", len(ready))
            self._count(f"batch_size_le_{next((b for b in BATCH_BUCKETS if len(ready) <= b), 'inf')}")
            for message, output in zip(ready, outputs):
                if output is _FAILED:
                    self._count("errors_model")
                    reply = error_reply(500, "the model failed on this image (see the worker's log)")
                else:
                    # worker_ms lets clients tell the model's share of their latency from the serving path's.
                    worker_ms = round((time.perf_counter() - batch_started) * 1000, 3)
                    reply = self._encode(output, worker_ms)
                replies.append((message, reply))
        self._count("requests", len(batch))
        return replies

    def _encode(self, output, worker_ms: float) -> dict:
        try:
            return {"ok": True, "status": 200, "result": {**self.service.encode(output), "worker_ms": worker_ms}}
        except Exception:
            log.exception("worker %s: the service failed to encode one answer", self.name)
            self._count("errors_model")
            return error_reply(500, "the service failed on this request (see the worker's log)")

    def _predict(self, items: list) -> list:
        try:
            return self.service.predict(items)
        except Exception:
            if len(items) == 1:
                log.exception("worker %s: the model failed on one image", self.name)
                return [_FAILED]
        # One bad input must not fail its batch-mates: run them one by one.
        return [output for item in items for output in self._predict([item])]

    def _count(self, name: str, value: float = 1) -> None:
        self._stats[name] = self._stats.get(name, 0) + value


def _decode_error_reply(exc: DecodeError) -> dict:
    # A size limit (decode.ImageTooLarge names it) is the client's to respect: 413, as the API's header check.
    if getattr(exc, "limit", None):
        return error_reply(413, f"the image is too large: {exc}")
    return error_reply(422, f"cannot decode the image: {exc}")
