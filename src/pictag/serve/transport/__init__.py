"""The queue between the API and the workers: `base` (the interface and what both transports share), `memory`
(in-process, for single-machine serving and unit tests) and `redis` (Redis Streams, for production).
"""

from __future__ import annotations

from pictag.serve.config import ServeConfig
from pictag.serve.transport.base import Transport
from pictag.serve.transport.memory import InProcessTransport
from pictag.serve.transport.redis import RedisStreamsTransport


def create_transport(cfg: ServeConfig, consumer: str | None = None) -> Transport:
    """The transport a config names: Redis Streams when it sets `redis_url`, else an in-process queue.

    Args:
        cfg: The serving config.
        consumer: This worker's name in the Redis consumer group (workers only).
    """
    limits = dict(max_queue=cfg.max_queue, visibility_timeout_s=cfg.visibility_timeout_s,
                  max_deliveries=cfg.max_deliveries, job_ttl_s=cfg.job_ttl_s)  # fmt: skip
    if cfg.redis_url:
        return RedisStreamsTransport(cfg.redis_url, cfg.queue, consumer=consumer, **limits)
    return InProcessTransport(**limits)
