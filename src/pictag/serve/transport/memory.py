"""The in-process transport: a thread-safe queue between the API's event loop and worker threads of one process,
for single-machine serving and unit tests.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time

from pictag.serve.transport.base import (
    HEARTBEAT_TTL_S,
    Message,
    QueueFull,
    QueueHealth,
    ReplyTo,
    Transport,
    dead_letter_reply,
    job_view,
)


class InProcessTransport(Transport):
    """A thread-safe queue inside one process: the API's event loop on one side, worker threads on the other.

    Args:
        max_queue, visibility_timeout_s, max_deliveries, job_ttl_s: see `ServeConfig`.
    """

    def __init__(
        self,
        max_queue: int = 1000,
        visibility_timeout_s: float = 30.0,
        max_deliveries: int = 3,
        job_ttl_s: float = 3600.0,
    ):
        self.max_queue = max_queue
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.job_ttl_s = job_ttl_s
        self._cond = threading.Condition()
        self._queue: collections.deque[Message] = collections.deque()
        self._inflight: dict[str, tuple[Message, float]] = {}
        self._answered: dict[ReplyTo, float] = {}
        self._replies: dict[str, concurrent.futures.Future] = {}
        self._jobs: dict[str, dict] = {}
        self._dead: list[Message] = []
        self._workers: dict[str, float] = {}
        self._stats: collections.Counter = collections.Counter()
        self._serial = 0

    async def submit(self, messages: list[Message]) -> None:
        with self._cond:
            if len(self._queue) + len(self._inflight) + len(messages) > self.max_queue:
                raise QueueFull(
                    f"{len(self._queue) + len(self._inflight)} requests queued (max_queue {self.max_queue})"
                )
            for message in messages:
                self._serial += 1
                message.receipt = str(self._serial)
                if message.reply_to.request_id is not None:
                    self._replies[message.reply_to.request_id] = concurrent.futures.Future()
                self._queue.append(message)
            self._cond.notify_all()

    async def wait(self, request_id: str, timeout: float) -> dict | None:
        with self._cond:
            future = self._replies.get(request_id)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            with self._cond:
                self._replies.pop(request_id, None)

    async def create_job(self, job_id: str, total: int) -> None:
        with self._cond:
            self._expire_jobs()
            self._jobs[job_id] = {"total": total, "done": 0, "failed": 0, "results": [None] * total,
                                  "expires": time.monotonic() + self.job_ttl_s}  # fmt: skip

    async def delete_job(self, job_id: str) -> None:
        with self._cond:
            self._jobs.pop(job_id, None)

    async def job(self, job_id: str) -> dict | None:
        with self._cond:
            self._expire_jobs()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return job_view(job_id, job["total"], job["done"], job["failed"], list(job["results"]))

    async def health(self) -> QueueHealth:
        with self._cond:
            now = time.monotonic()
            live = sum(1 for seen in self._workers.values() if now - seen < HEARTBEAT_TTL_S)
            return QueueHealth(len(self._queue) + len(self._inflight), live, len(self._dead), dict(self._stats))

    def receive(self, max_items: int, timeout: float) -> list[Message]:
        with self._cond:
            if not self._queue:
                self._cond.wait(timeout)
            taken = []
            now = time.monotonic()
            while self._queue and len(taken) < max_items:
                message = self._queue.popleft()
                self._inflight[message.receipt] = (message, now)
                taken.append(message)
            return taken

    def complete(self, replies: list[tuple[Message, dict]]) -> None:
        with self._cond:
            now = time.monotonic()
            for message, reply in replies:
                self._inflight.pop(message.receipt, None)
                if message.reply_to in self._answered:
                    continue
                self._answered[message.reply_to] = now
                self._deliver(message.reply_to, reply)
            # Markers only have to outlive any redelivery of their message.
            horizon = now - 10 * max(self.visibility_timeout_s, 1.0)
            for key in [k for k, t in self._answered.items() if t < horizon]:
                del self._answered[key]

    def _deliver(self, reply_to: ReplyTo, reply: dict) -> None:
        if reply_to.request_id is not None:
            future = self._replies.get(reply_to.request_id)
            if future is not None and not future.done():
                future.set_result(reply)
            return
        job = self._jobs.get(reply_to.job_id)
        if job is not None:
            job["results"][reply_to.index] = reply
            job["done"] += 1
            job["failed"] += not reply.get("ok")

    def claim_stale(self, max_items: int) -> list[Message]:
        with self._cond:
            now = time.monotonic()
            stale = [m for m, taken in self._inflight.values() if now - taken >= self.visibility_timeout_s]
            claimed = []
            for message in stale[:max_items]:
                message.deliveries += 1
                if message.deliveries > self.max_deliveries:
                    del self._inflight[message.receipt]
                    self._dead.append(message)
                    if message.reply_to not in self._answered:
                        self._answered[message.reply_to] = now
                        self._deliver(message.reply_to, dead_letter_reply(message, self.dead_stream))
                else:
                    self._inflight[message.receipt] = (message, now)
                    claimed.append(message)
            return claimed

    def heartbeat(self, worker: str, stats: dict[str, float]) -> None:
        with self._cond:
            self._workers[worker] = time.monotonic()
            self._stats.update(stats)

    def retire(self, worker: str) -> None:
        with self._cond:
            self._workers.pop(worker, None)

    def _expire_jobs(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, job in self._jobs.items() if job["expires"] < now]:
            del self._jobs[job_id]
