"""A local serving stack of real processes (redis-server, `pictag serve api`, `pictag serve worker`) for the
integration tests and the load benchmark. Every wait is bounded and every child is killed on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.05):
    """Poll `check()` until it returns something truthy; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # not up yet
            pass
        time.sleep(every)
    raise TimeoutError(f"{what} not within {timeout:g}s")


class RedisServer:
    """A throwaway redis-server on its own port, without persistence, so it can be killed and restarted empty."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]  # fmt: skip
        log = open(self.folder / "redis.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(client.ping, 10, f"redis-server on port {self.port}")
        client.close()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class Stack:
    """Redis, API processes and workers on loopback, configured by one serve.yaml.

    Args:
        folder: Where the config and each process's log go.
        config: serve.yaml values (redis_url and port are filled in).
        env: Environment of the children (e.g. with PYTHONPATH pointing at a checkout).
        api_processes: uvicorn processes of the API.
    """

    def __init__(self, folder: Path, config: dict, env: dict | None = None, api_processes: int = 1):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.folder / "redis")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {**config, "redis_url": self.redis.url, "port": self.port}
        self.config_path = self.folder / "serve.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.env = dict(env or os.environ)
        self.api_processes = api_processes
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.killed: list[subprocess.Popen] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")
        cmd = [sys.executable, "-m", "pictag", "serve", *args, "--config", str(self.config_path)]
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, workers: int = 2, worker_args: tuple[str, ...] = (), timeout: float = 90) -> Stack:
        """Start Redis, the API and `workers` workers; return once /readyz counts every worker."""
        self.redis.start()
        self.api = self._spawn("api", "api", "--processes", str(self.api_processes))
        for _ in range(workers):
            self.add_worker(*worker_args)
        if workers:
            self.wait_ready(workers, timeout)
        else:
            self.wait_api(timeout)
        return self

    def add_worker(self, *args: str) -> subprocess.Popen:
        worker = self._spawn(f"worker{len(self.workers) + len(self.killed)}", "worker", *args)
        self.workers.append(worker)
        return worker

    def replace_workers(self, workers: int, *args: str, timeout: float = 90) -> None:
        """Stop the workers gracefully and start `workers` new ones with `args` (e.g. another batch size)."""
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            w.wait(30)
        self.workers, self.killed = [], []
        for _ in range(workers):
            self.add_worker(*args)
        self.wait_ready(workers, timeout)

    def wait_ready(self, workers: int, timeout: float = 90) -> None:
        def ready():
            for p in [self.api, *self.workers]:
                if p is not None and p not in self.killed and p.poll() is not None:
                    raise RuntimeError(f"a serving process exited with {p.returncode}; see logs in {self.folder}")
            r = httpx.get(f"{self.url}/readyz", timeout=2)
            return r.status_code == 200 and r.json()["live_workers"] >= workers

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"stack not ready with {workers} worker(s) within {timeout:g}s; logs in {self.folder}")

    def wait_api(self, timeout: float = 60) -> None:
        wait_until(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200, timeout, "the API")

    def kill_worker(self, index: int) -> None:
        """SIGKILL one worker: no cleanup, no acknowledgement, as a crash or an OOM kill would leave it."""
        worker = self.workers[index]
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        self.killed.append(worker)

    def stop(self) -> None:
        for p in [*self.workers, self.api]:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [*self.workers, self.api]:
            if p is None:
                continue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.redis.kill()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
