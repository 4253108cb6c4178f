"""Deadlines for a request to arrive: its headers within `header_timeout_s`, then its body within `body_timeout_s`.

uvicorn bounds only the idle time between two requests of a keep-alive connection (`timeout_keep_alive`): a
client that sends part of its headers, or trickles its body a byte at a time, held its connection for as long as
it liked (six such connections were all still open after 45 s). Each deadline here is for the whole phase, not per
read, so trickling does not extend it; the time the app then takes is `request_timeout_s`'s.
"""

from __future__ import annotations

import asyncio
from functools import partial

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pictag.serve.config import ServeConfig


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers or body do not arrive in time."""

    def __init__(self, *args, header_timeout_s: float, body_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        # Their state IDLE: the request's headers are awaited; SEND_BODY: its body. Other states have no deadline.
        self._timeouts = {h11.IDLE: header_timeout_s, h11.SEND_BODY: body_timeout_s}
        self._state: object = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _watch(self) -> None:
        # A new phase starts a new deadline; more bytes within a phase do not. Between two requests of a
        # keep-alive connection, uvicorn's keep-alive timeout runs, and the next request's first bytes land here.
        state = self.conn.their_state
        if state is self._state:
            return
        self._state = state
        self._cancel()
        timeout = self._timeouts.get(state)
        if timeout is not None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol(cfg: ServeConfig) -> partial:
    """uvicorn's `http=` option for a config: a factory that pickles, for the processes `--processes N` spawns."""
    return partial(DeadlineProtocol, header_timeout_s=cfg.header_timeout_s, body_timeout_s=cfg.body_timeout_s)
