"""Slow clients against `pictag serve api` as a real process (slowloris): raw sockets on 127.0.0.1 that send nothing,
part of their headers, or trickle headers or a body, are each closed once `header_timeout_s` or `body_timeout_s`
has passed, while the server keeps answering everyone else."""

from __future__ import annotations

import pickle
import socket
import threading
import time

import httpx
import pytest
from serving_stack import Stack

from conftest import subprocess_env
from pictag.serve.config import ServeConfig
from pictag.serve.timeouts import http_protocol

HEADER_TIMEOUT, BODY_TIMEOUT = 1.5, 2.5
# Slack for a loaded 2-core machine: the close is an event-loop timer, so it comes at once unless the loop is busy.
SLACK = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # The API half alone, on its own Redis: it loads no model, so it starts in seconds, and no request here is queued.
    config = {"labels": "cat,dog", "header_timeout_s": HEADER_TIMEOUT, "body_timeout_s": BODY_TIMEOUT}
    with Stack(tmp_path_factory.mktemp("slow_clients"), config, env=subprocess_env()) as stack:
        yield stack.start(workers=0).port


HEADERS = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
# name: (what is sent at once, what is then trickled a byte at a time, the deadline that applies)
CLIENTS = {
    "silent": (b"", b"", HEADER_TIMEOUT),
    "partial headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"", HEADER_TIMEOUT),
    "trickled headers": (b"GET /healthz HTTP/1.1\r\n", b"X-A: " + b"a" * 1000, HEADER_TIMEOUT),
    "no body": (HEADERS, b"", BODY_TIMEOUT),
    "partial body": (HEADERS + b'{"labels": ', b"", BODY_TIMEOUT),
    "trickled body": (HEADERS, b"{" + b" " * 98, BODY_TIMEOUT),
}


def closed_after(port: int, first: bytes, trickle: bytes, every: float = 0.2, limit: float = 30) -> float:
    """Seconds from connecting until the server closes the connection, while the client keeps to its script."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=every) as sock:
        sock.sendall(first)
        rest = iter(trickle)
        while time.monotonic() - started < limit:
            try:
                if not sock.recv(4096):
                    return time.monotonic() - started
            except TimeoutError:
                byte = next(rest, None)
                if byte is not None:
                    try:
                        sock.send(bytes([byte]))
                    except OSError:  # closed while sending
                        return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
    return float("inf")


def test_slow_clients_are_closed_at_their_deadline_while_others_are_served(server):
    seconds: dict[str, float] = {}

    def client(name: str) -> None:
        first, trickle, _ = CLIENTS[name]
        seconds[name] = closed_after(server, first, trickle)

    threads = [threading.Thread(target=client, args=(name,)) for name in CLIENTS]
    for thread in threads:
        thread.start()
    # Everyone else is served meanwhile: probes and a whole request on a keep-alive connection.
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as http:
        assert http.get("/healthz").status_code == 200
        r = http.post("/v1/classify", json={"labels": ["cat", "dog"], "image_base64": "AA=="})
        assert r.status_code == 415, r.text  # answered (not an image), not held
    for thread in threads:
        thread.join(60)
    for name, (_, _, deadline) in CLIENTS.items():
        assert deadline - 0.2 <= seconds[name] <= deadline + SLACK, (name, seconds)


def test_a_request_that_arrives_in_time_is_answered_on_a_reused_connection(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        for _ in range(2):
            time.sleep(HEADER_TIMEOUT * 2 / 3)  # twice that is beyond the deadline: each request has its own
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n":
                sock.send(bytes([byte]))
            answer = b""
            while b'"ok"}' not in answer:
                answer += sock.recv(4096) or pytest.fail(f"closed after {answer!r}")
            assert answer.startswith(b"HTTP/1.1 200"), answer


@pytest.mark.parametrize("name", ["header_timeout_s", "body_timeout_s"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_a_timeout_must_be_a_positive_number(name, value):
    with pytest.raises(Exception, match=f"{name} must be a positive number of seconds"):
        ServeConfig(**{name: value})


def test_the_protocol_travels_to_spawned_api_processes():
    factory = pickle.loads(pickle.dumps(http_protocol(ServeConfig(header_timeout_s=3, body_timeout_s=4))))
    assert factory.keywords == {"header_timeout_s": 3, "body_timeout_s": 4}
