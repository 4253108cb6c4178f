"""What every transport shares: the `Transport` interface, the `Message` it carries, the typed `ReplyTo` address
of each answer, the queue's errors, and the replies and job views both transports build the same way.

Delivery is at least once (a claimed request may run twice when its first worker died after predicting), and
answering is exactly once: the reply and the acknowledgement are one atomic step guarded by a per-request marker,
so a second completion of the same request is dropped.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

HEARTBEAT_TTL_S = 5.0


class QueueFull(Exception):
    """The queue holds `max_queue` requests; the client should retry later."""


class TransportUnavailable(Exception):
    """The queue backend cannot be reached (Redis down); the client should retry later."""


@dataclass(frozen=True)
class ReplyTo:
    """Where an answer goes, and its unique name: the client waiting on one request, or one item of a job.

    Give either `request_id`, or `job_id` and `index`.

    Attributes:
        request_id: The synchronous request whose client waits for this answer.
        job_id: The job this image belongs to.
        index: The image's place in its job.
        inbox: The API process whose listener hands the answer to the waiting client (set by the Redis transport).
    """

    request_id: str | None = None
    job_id: str | None = None
    index: int | None = None
    inbox: str = ""

    def __post_init__(self):
        if (self.request_id is None) == (self.job_id is None) or (self.job_id is None) != (self.index is None):
            raise ValueError(f"a reply goes to a request_id, or to a job_id and index, not {self!r}")

    def __str__(self) -> str:
        """The wire form, also the answer's name in exactly-once markers: "r:<inbox>:<request>" or "j:<job>:<index>"."""
        if self.request_id is not None:
            return f"r:{self.inbox}:{self.request_id}"
        return f"j:{self.job_id}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> ReplyTo:
        """The address whose wire form is `text` (see `__str__`)."""
        kind, _, rest = text.partition(":")
        if kind == "r":
            inbox, _, request_id = rest.partition(":")
            return cls(request_id=request_id, inbox=inbox)
        job_id, _, index = rest.rpartition(":")
        return cls(job_id=job_id, index=int(index))


@dataclass
class Message:
    """One image to classify, on its way from the API to a worker.

    Attributes:
        reply_to: Where the answer goes.
        image: The encoded image bytes.
        params: The request's options for the service (labels, templates and top_k for zero-shot).
        deadline: Epoch seconds after which nobody waits for the answer any more (0: no deadline).
        sent_at: Epoch seconds when the API queued it; workers learn the arrival rate from it.
        deliveries: How many times a worker has taken this message, this time included.
        receipt: The transport's handle on the message (the stream entry id for Redis).
    """

    reply_to: ReplyTo
    image: bytes
    params: dict
    deadline: float = 0.0
    sent_at: float = field(default_factory=time.time)
    deliveries: int = 1
    receipt: str = ""


@dataclass
class QueueHealth:
    """What /readyz and /metrics report about the queue."""

    depth: int
    live_workers: int
    dead_letters: int
    worker_stats: dict[str, float] = field(default_factory=dict)


def error_reply(status: int, error: str) -> dict:
    """A reply that tells the client what went wrong, with the HTTP status it should get."""
    return {"ok": False, "status": status, "error": error}


def dead_letter_reply(message: Message, dead_stream: str) -> dict:
    """The error a dead-lettered message's client gets instead of an answer."""
    return error_reply(
        500,
        f"this request stopped {message.deliveries - 1} worker(s) before they could answer; it was moved to the "
        f"dead-letter stream {dead_stream!r} and will not be retried (check the image and the worker logs)",
    )


def job_view(job_id: str, total: int, done: int, failed: int, results: list) -> dict:
    """A job's public state, the same for every transport."""
    status = "done" if done >= total else ("running" if done else "queued")
    return {
        "id": job_id,
        "status": status,
        "total": total,
        "done": done,
        "failed": failed,
        "progress": done / total if total else 1.0,
        "results": results,
    }


class Transport(ABC):
    """Carries messages from API processes to workers and replies back.

    The client half is async (it runs in the API's event loop); the worker half is blocking (it runs in a worker
    process or thread, beside the model).
    """

    dead_stream = "dead-letter"

    # --- client half --------------------------------------------------------------------------------------------
    @abstractmethod
    async def submit(self, messages: list[Message]) -> None:
        """Enqueue all messages or none.

        Raises:
            QueueFull: they do not fit under max_queue.
            TransportUnavailable: the backend is down.
        """

    @abstractmethod
    async def wait(self, request_id: str, timeout: float) -> dict | None:
        """The reply to the message sent to `ReplyTo(request_id=request_id)`, or None after `timeout` seconds."""

    @abstractmethod
    async def create_job(self, job_id: str, total: int) -> None:
        """Register a job of `total` messages, sent to `ReplyTo(job_id=job_id, index=i)`, before submitting them."""

    @abstractmethod
    async def delete_job(self, job_id: str) -> None:
        """Forget a job whose messages could not be submitted."""

    @abstractmethod
    async def job(self, job_id: str) -> dict | None:
        """The job's state (see `job_view`), or None if unknown or expired."""

    @abstractmethod
    async def health(self) -> QueueHealth:
        """Queue depth, live workers and worker statistics; raises TransportUnavailable when down."""

    async def aclose(self) -> None:  # noqa: B027 (optional: only networked transports hold connections)
        """Release client connections."""

    # --- worker half --------------------------------------------------------------------------------------------
    @abstractmethod
    def receive(self, max_items: int, timeout: float) -> list[Message]:
        """Take up to `max_items` new messages, blocking at most `timeout` seconds for the first one."""

    @abstractmethod
    def complete(self, replies: list[tuple[Message, dict]]) -> None:
        """Answer and acknowledge messages; an answer to an already answered message is dropped."""

    @abstractmethod
    def claim_stale(self, max_items: int) -> list[Message]:
        """Take over messages whose worker has been silent for the visibility timeout.

        Messages delivered more than max_deliveries times go to the dead-letter stream and their clients get an
        error instead; the rest are returned for this worker to run.
        """

    @abstractmethod
    def heartbeat(self, worker: str, stats: dict[str, float]) -> None:
        """Say this worker is alive and add its statistics since the last heartbeat."""

    @abstractmethod
    def retire(self, worker: str) -> None:
        """Say this worker has stopped, so readiness no longer counts it."""

    def close(self) -> None:  # noqa: B027 (optional, as aclose)
        """Release worker connections."""
