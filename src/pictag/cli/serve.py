"""`pictag serve`: the HTTP API with an in-process worker, or its production halves (`api`, `worker`) on Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import CommandParser, add_command

if TYPE_CHECKING:
    from pictag.serve.config import ServeConfig

EXAMPLES = """examples:
  pictag serve --config serve.yaml                      # one machine: API + in-process worker, no Redis
  pictag serve --model runs/parts                       # a trained run: its own classes, no labels
  pictag serve --model runs/arcface --gallery emb/      # a vote of the labelled gallery, with its nearest images
  pictag serve api --config serve.yaml --port 8000 --processes 4
  pictag serve worker --config serve.yaml --device cuda:0 --batch-size 32 --max-wait-ms 10
  curl -F image=@cat.jpg -F labels=cat,dog http://localhost:8000/v1/classify
"""
MODES = {
    "api": ("API processes only (needs redis_url)", "_api_processes"),
    "worker": ("one model worker: dynamic batches from Redis (needs redis_url)", "_run_worker"),
}


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "serve",
        "pictag.serve.config:ServeConfig",
        "pictag.cli.serve:_single",
        help="serve a model over HTTP: zero-shot labels, a trained run's classes, or a gallery vote",
        description="Serve /v1/classify, /v1/jobs, a web page at / and /metrics. The model picks the service unless "
        "--service names one: a trained run serves its classes, an arcface run votes against --gallery, a CLIP-family "
        "model (or a clip run) classifies by labels (zero-shot). Without a mode, runs the API and "
        "an in-process worker on one machine (no Redis). In production run `serve api` and any number of "
        "`serve worker`, joined by Redis (redis_url).",
        examples=EXAMPLES,
    )
    modes = p.add_subparsers(dest="mode", metavar="MODE", parser_class=CommandParser)
    for mode, (text, target) in MODES.items():
        parser = modes.add_parser(mode, help=text, description=text[0].upper() + text[1:] + ".")
        parser.config, parser.target = "pictag.serve.config:ServeConfig", f"pictag.cli.serve:{target}"


def _needs_redis(cfg: ServeConfig, mode: str) -> None:
    from pictag.errors import PictagError

    if not cfg.redis_url:
        raise PictagError(f"`pictag serve {mode}` needs redis_url (in serve.yaml or --redis-url); without Redis use "
                          "`pictag serve`")  # fmt: skip


def _listen(cfg: ServeConfig):
    """The bound listening socket, or one line saying why the address cannot be had (in use, not allowed)."""
    import os
    import socket

    from pictag.errors import PictagError

    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    try:
        return socket.create_server((cfg.host, cfg.port), family=family, backlog=2048)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise PictagError(f"cannot listen on {cfg.host}:{cfg.port}: {reason}; pick another --port or --host") from None


def _single(cfg: ServeConfig) -> str:
    import dataclasses

    import uvicorn

    from pictag.serve.api import create_app
    from pictag.serve.service import create_service
    from pictag.serve.timeouts import http_protocol

    cfg = dataclasses.replace(cfg, redis_url=None)
    # The address and the model first, outside uvicorn's startup: either failing is then one line and exit 2,
    # not a traceback from the app's lifespan.
    sock = _listen(cfg)
    try:
        service = create_service(cfg)
        service.setup()
    except BaseException:
        sock.close()
        raise
    print(f"pictag serve: http://{cfg.host}:{cfg.port} ({service}, in-process worker; page at /, API docs at /docs)")
    app = create_app(cfg, service=service)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", http=http_protocol(cfg))).run(sockets=[sock])
    return ""


def _api_processes(cfg: ServeConfig) -> str:
    import os
    import shutil
    import tempfile

    import uvicorn

    from pictag.config import dump_config
    from pictag.serve.api import CONFIG_ENV, create_app
    from pictag.serve.timeouts import http_protocol

    _needs_redis(cfg, "api")
    _listen(cfg).close()  # the address is free and allowed: one line now rather than a log line from each process
    processes = cfg.processes
    print(f"pictag serve api: http://{cfg.host}:{cfg.port}, {processes} process(es), queue {cfg.redis_url}")
    if processes <= 1:
        uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning", http=http_protocol(cfg))
        return ""
    folder = tempfile.mkdtemp(prefix="pictag-serve-")
    try:
        os.environ[CONFIG_ENV] = str(dump_config(cfg, os.path.join(folder, "serve.yaml")))
        # Every uvicorn process writes its counters here, and /metrics in any of them sums them all.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(folder, "metrics"))
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
        uvicorn.run(
            "pictag.serve.api:create_app_from_env",
            factory=True,
            host=cfg.host,
            port=cfg.port,
            workers=processes,
            log_level="warning",
            http=http_protocol(cfg),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ""


def _run_worker(cfg: ServeConfig) -> str:
    import logging
    import signal
    import threading

    from pictag.serve.service import create_service
    from pictag.serve.transport import create_transport
    from pictag.serve.worker import Worker, worker_name

    _needs_redis(cfg, "worker")
    name = worker_name()
    transport = create_transport(cfg, consumer=name)
    service = create_service(cfg)
    service.setup()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("pictag").warning(
        "worker %s: %s, batch %d, max wait %g ms", name, service, cfg.batch_size, cfg.max_wait_ms
    )
    Worker(service, transport, cfg.batch_size, cfg.max_wait_ms, name=name,
           claim_every_s=max(min(cfg.visibility_timeout_s / 2, 5.0), 0.2)).run(stop)  # fmt: skip
    transport.close()
    return ""
