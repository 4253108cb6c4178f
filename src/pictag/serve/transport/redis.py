"""The Redis Streams transport: API processes and workers on any number of machines, joined by one Redis.

redis-py is imported inside the methods, so that importing this module (as the API does) costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid

from pictag.serve.transport.base import (
    HEARTBEAT_TTL_S,
    Message,
    QueueFull,
    QueueHealth,
    ReplyTo,
    Transport,
    TransportUnavailable,
    dead_letter_reply,
    job_view,
)

_SHORTEST_BLOCK_S = 0.2
_POLL_S = 0.0005
_API_CONNECTIONS = 32


def _encode_params(params: dict) -> str:
    return json.dumps(params, separators=(",", ":"))


_SUBMIT = """
local n = tonumber(ARGV[2])
local depth = redis.call('XLEN', KEYS[1])
if depth + n > tonumber(ARGV[1]) then return -1 end
for i = 0, n - 1 do
  local b = 3 + i * 5
  redis.call('XADD', KEYS[1], '*', 'reply', ARGV[b], 'params', ARGV[b + 1], 'image', ARGV[b + 2],
             'deadline', ARGV[b + 3], 'sent', ARGV[b + 4])
end
return depth + n
"""

# KEYS: stream, answered marker, inbox list or job hash. ARGV: group, entry id, reply, marker ttl, kind, index, ok,
# inbox ttl.
# Acknowledging, deleting the entry (so XLEN is the queue depth) and answering happen atomically, once per request.
_COMPLETE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then return 0 end
if ARGV[5] == 'r' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[8])
elseif redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'r:' .. ARGV[6], ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'done', 1)
  if ARGV[7] == '0' then redis.call('HINCRBY', KEYS[3], 'failed', 1) end
end
return 1
"""


class RedisStreamsTransport(Transport):
    """Redis Streams with one consumer group: each request is delivered to one worker, and stays pending until
    answered, so a worker's death loses nothing.

    Keys, all under the `queue` prefix: `:requests` (the stream), `:dead` (dead letters), `:inbox:<api>` (the
    synchronous answers for one API process, drained by its listener), `:job:<id>` (a job's progress and
    results), `:answered:<reply_to>` (exactly-once markers), `:workers` (heartbeats), `:stats` (worker counters).

    Args:
        url: redis://host:port/db.
        queue: Key prefix.
        consumer: This worker's name in the consumer group (worker side only).
        max_queue, visibility_timeout_s, max_deliveries, job_ttl_s: see `ServeConfig`.
        reply_ttl_s: How long answers wait in an inbox whose API process stopped reading.
    """

    group = "workers"

    def __init__(
        self,
        url: str,
        queue: str = "pictag",
        consumer: str | None = None,
        max_queue: int = 1000,
        visibility_timeout_s: float = 30.0,
        max_deliveries: int = 3,
        job_ttl_s: float = 3600.0,
        reply_ttl_s: float = 120.0,
    ):
        self.url = url
        self.queue = queue
        self.stream = f"{queue}:requests"
        self.dead_stream = f"{queue}:dead"
        self.consumer = consumer
        self.max_queue = max_queue
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.job_ttl_s = job_ttl_s
        self.reply_ttl_s = reply_ttl_s
        self._async = None
        self._sync = None
        # This process's inbox: one list that one listener drains for every waiting request, instead of one
        # blocked connection per request.
        self.inbox = uuid.uuid4().hex[:16]
        self._waiting: dict[str, asyncio.Future] = {}
        self._listener: asyncio.Task | None = None

    # --- connections ------------------------------------------------------------------------------------------
    @property
    def _aredis(self):
        if self._async is None:
            import redis.asyncio

            # A bounded pool that queues callers when all connections are busy (the default pool fails them), and a
            # generous connect timeout: an overloaded event loop must not read as Redis being down (a refused
            # connection still fails at once).
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url, max_connections=_API_CONNECTIONS, timeout=30, socket_connect_timeout=10.0
            )
            self._async = redis.asyncio.Redis.from_pool(pool)
            self._submit_script = self._async.register_script(_SUBMIT)
        return self._async

    @property
    def _redis(self):
        if self._sync is None:
            import redis

            client = redis.Redis.from_url(self.url, socket_connect_timeout=2.0)
            self._complete_sha = client.script_load(_COMPLETE)
            self._ensure_group(client)
            self._sync = client  # only once set up, so a failed attempt is retried whole
        return self._sync

    def _ensure_group(self, client=None) -> None:
        import redis

        try:
            # From id 0: answered entries are deleted, so everything left in the stream still needs an answer.
            (client or self._sync).xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _call(self, coro):
        import redis

        try:
            return await coro
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise TransportUnavailable(f"Redis at {self.url} is unreachable: {exc}") from None

    # --- client half --------------------------------------------------------------------------------------------
    async def submit(self, messages: list[Message]) -> None:
        args: list = [self.max_queue, len(messages)]
        loop = asyncio.get_running_loop()
        waiting = []
        for m in messages:
            reply_to = m.reply_to
            if reply_to.request_id is not None:
                self._waiting[reply_to.request_id] = loop.create_future()
                waiting.append(reply_to.request_id)
                reply_to = dataclasses.replace(reply_to, inbox=self.inbox)
            args += [str(reply_to), _encode_params(m.params), m.image, repr(m.deadline), repr(m.sent_at)]
        if waiting and (self._listener is None or self._listener.done()):
            self._listener = asyncio.create_task(self._listen())
        try:
            client = self._aredis  # connects, and registers the script
            depth = await self._call(self._submit_script(keys=[self.stream], args=args, client=client))
            if depth < 0:
                raise QueueFull(f"the queue is full (max_queue {self.max_queue})")
        except BaseException:
            for request_id in waiting:
                self._waiting.pop(request_id, None)
            raise

    async def wait(self, request_id: str, timeout: float) -> dict | None:
        future = self._waiting.get(request_id)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiting.pop(request_id, None)

    async def _listen(self) -> None:
        import redis.asyncio

        key = f"{self.queue}:inbox:{self.inbox}"
        client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=10.0)
        backoff = 0.1
        try:
            while True:
                try:
                    got = await client.blpop([key], timeout=1)
                    items = [got[1], *(await client.lpop(key, 1000) or [])] if got else []
                    backoff = 0.1
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    # Answers queued in Redis may be gone with it: tell the waiting clients to retry.
                    error = TransportUnavailable(f"Redis at {self.url} is unreachable: {exc}")
                    for future in self._waiting.values():
                        if not future.done():
                            future.set_exception(error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                for raw in items:
                    answer = json.loads(raw)
                    future = self._waiting.get(answer["id"])
                    if future is not None and not future.done():
                        future.set_result(answer["reply"])
        finally:
            await client.aclose()

    async def create_job(self, job_id: str, total: int) -> None:
        key = f"{self.queue}:job:{job_id}"
        pipe = self._aredis.pipeline(transaction=True)
        pipe.hset(key, mapping={"total": total, "done": 0, "failed": 0})
        pipe.expire(key, int(self.job_ttl_s))
        await self._call(pipe.execute())

    async def delete_job(self, job_id: str) -> None:
        await self._call(self._aredis.delete(f"{self.queue}:job:{job_id}"))

    async def job(self, job_id: str) -> dict | None:
        fields = await self._call(self._aredis.hgetall(f"{self.queue}:job:{job_id}"))
        if not fields:
            return None
        fields = {k.decode(): v for k, v in fields.items()}
        total = int(fields["total"])
        results: list = [None] * total
        for name, value in fields.items():
            if name.startswith("r:"):
                results[int(name[2:])] = json.loads(value)
        return job_view(job_id, total, int(fields["done"]), int(fields["failed"]), results)

    async def health(self) -> QueueHealth:
        pipe = self._aredis.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.zcount(f"{self.queue}:workers", time.time() - HEARTBEAT_TTL_S, "+inf")
        pipe.xlen(self.dead_stream)
        pipe.hgetall(f"{self.queue}:stats")
        depth, live, dead, stats = await self._call(pipe.execute())
        return QueueHealth(depth, live, dead, {k.decode(): float(v) for k, v in stats.items()})

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    # --- worker half --------------------------------------------------------------------------------------------
    def receive(self, max_items: int, timeout: float) -> list[Message]:
        if timeout >= _SHORTEST_BLOCK_S:
            return self._read(max_items, int(timeout * 1000))
        # Redis ends a BLOCK by timeout only on its cron tick (every 100 ms at the default hz 10), so a short wait
        # (the batching window) polls instead: a 2 ms window would otherwise last up to 100 ms.
        deadline = time.monotonic() + timeout
        while True:
            got = self._read(max_items, None)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            time.sleep(min(remaining, _POLL_S))

    def _read(self, max_items: int, block_ms: int | None) -> list[Message]:
        import redis

        try:
            got = self._redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=max_items, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group()  # Redis restarted empty
            return []
        return [self._message(entry_id, fields) for _, entries in got or [] for entry_id, fields in entries]

    def complete(self, replies: list[tuple[Message, dict]]) -> None:
        import redis

        # A marker only has to outlive every redelivery of its message.
        marker_ttl = int(max(60, 2 * self.visibility_timeout_s * (self.max_deliveries + 1)))
        calls = []
        for message, reply in replies:
            to = message.reply_to
            if to.request_id is not None:
                kind, index, target = "r", "", f"{self.queue}:inbox:{to.inbox}"
                payload = {"id": to.request_id, "reply": reply}
            else:
                kind, index, target, payload = "j", to.index, f"{self.queue}:job:{to.job_id}", reply
            keys = [self.stream, f"{self.queue}:answered:{to}", target]
            ok = int(bool(reply.get("ok")))
            args = [
                self.group,
                message.receipt,
                json.dumps(payload),
                marker_ttl,
                kind,
                index,
                ok,
                int(self.reply_ttl_s),
            ]
            calls.append((keys, args))
        # EVALSHA in one pipeline: one round trip (redis-py's Script objects add a SCRIPT EXISTS to each).
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self._complete_sha, len(keys), *keys, *args)
            try:
                pipe.execute()
                return
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self._complete_sha = self._redis.script_load(_COMPLETE)  # Redis restarted without its scripts

    def claim_stale(self, max_items: int) -> list[Message]:
        r = self._redis
        idle_ms = int(self.visibility_timeout_s * 1000)
        try:
            _, entries, _ = r.xautoclaim(self.stream, self.group, self.consumer, idle_ms, "0-0", count=max_items)
        except Exception as exc:
            if "NOGROUP" in str(exc):
                self._ensure_group()
                return []
            raise
        self._forget_dead_consumers()
        if not entries:
            return []
        pending = r.xpending_range(self.stream, self.group, "-", "+", 10_000, consumername=self.consumer)
        deliveries = {p["message_id"]: p["times_delivered"] for p in pending}
        claimed, dead = [], []
        for entry_id, fields in entries:
            if fields is None:
                continue
            message = self._message(entry_id, fields)
            message.deliveries = deliveries.get(entry_id, 2)
            (dead if message.deliveries > self.max_deliveries else claimed).append(message)
        if dead:
            pipe = r.pipeline(transaction=False)
            for m in dead:
                fields = {"reply": str(m.reply_to), "params": _encode_params(m.params), "image": m.image,
                          "deliveries": m.deliveries, "dead_at": time.time()}  # fmt: skip
                pipe.xadd(self.dead_stream, fields, maxlen=10_000, approximate=True)
            pipe.execute()
            self.complete([(m, dead_letter_reply(m, self.dead_stream)) for m in dead])
        return claimed

    def _forget_dead_consumers(self) -> None:
        horizon_ms = 10_000 * max(self.visibility_timeout_s, 6.0)
        for info in self._redis.xinfo_consumers(self.stream, self.group):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != self.consumer and info["pending"] == 0 and info["idle"] > horizon_ms:
                self._redis.xgroup_delconsumer(self.stream, self.group, name)

    def heartbeat(self, worker: str, stats: dict[str, float]) -> None:
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(f"{self.queue}:workers", {worker: now})
        pipe.zremrangebyscore(f"{self.queue}:workers", "-inf", now - 60)
        for name, value in stats.items():
            pipe.hincrbyfloat(f"{self.queue}:stats", name, value)
        pipe.execute()

    def retire(self, worker: str) -> None:
        self._redis.zrem(f"{self.queue}:workers", worker)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    @staticmethod
    def _message(entry_id: bytes, fields: dict) -> Message:
        return Message(
            reply_to=ReplyTo.parse(fields[b"reply"].decode()),
            image=fields[b"image"],
            params=json.loads(fields[b"params"]),
            deadline=float(fields[b"deadline"]),
            sent_at=float(fields[b"sent"]),
            receipt=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        )
