"""`pictag serve`: the HTTP API with an in-process worker, or its production halves (`api`, `worker`) on Redis."""

from __future__ import annotations

import argparse

from pictag.cli.common import options

EXAMPLES = """examples:
  pictag serve --config serve.yaml                      # one machine: API + in-process worker, no Redis
  pictag serve api --config serve.yaml --port 8000 --processes 4
  pictag serve worker --config serve.yaml --device cuda:0 --batch-size 32 --max-wait-ms 10
  curl -F image=@cat.jpg -F labels=cat,dog http://localhost:8000/v1/classify
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="serve.yaml; command-line flags override it")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="model spec (default $PICTAG_MODEL or open_clip:ViT-B-32/openai)")
    g.add_argument("--checkpoint", help="local weights file for --model")
    g.add_argument("--random-weights", action="store_true", default=None, help="random weights (tests, benchmarks)")
    g.add_argument("--labels", help="default labels when a request names none, comma-separated")
    g.add_argument("--labels-file", help="default labels, one per line")
    g.add_argument("--templates", help="default templates: simple or imagenet80")
    g.add_argument("--redis-url", help="redis://host:port/db holding the queue")
    g.add_argument("--queue", help="prefix of the deployment's Redis keys (default pictag)")


def _api(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("http")
    g.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="port to listen on (default 8000)")


def _worker(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("worker")
    g.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    g.add_argument("--precision", choices=["fp32", "tf32", "fp16", "bf16"], help="default: fp32 on CPU, half on GPU")
    g.add_argument("--batch-size", type=int, help="most requests per forward pass (default 32)")
    g.add_argument("--max-wait-ms", type=float, help="longest the first request of a batch waits (default 10)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve zero-shot classification over HTTP",
        description="Serve /v1/classify, /v1/jobs, a web page at / and /metrics. Without a mode, runs the API and "
        "an in-process worker on one machine (no Redis). In production run `serve api` and any number of "
        "`serve worker`, joined by Redis (redis_url).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    _api(p)
    _worker(p)
    p.set_defaults(func=run, mode=None)
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    api = modes.add_parser("api", help="API processes only (needs redis_url)", description="API processes only.")
    _common(api)
    _api(api)
    # Not --workers: that word means data-loading workers in every pictag command.
    api.add_argument("--processes", type=int, default=1, help="uvicorn processes serving the API (default 1)")
    api.set_defaults(func=run)
    worker = modes.add_parser(
        "worker", help="one model worker (needs redis_url)", description="A worker: dynamic batches from Redis."
    )
    _common(worker)
    _worker(worker)
    worker.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.config import load_config
    from pictag.errors import PictagError
    from pictag.serve.config import ServeConfig

    mode = args.mode
    cfg = load_config(ServeConfig, args.config, **options(args, "mode", "processes"))
    if mode is None:
        return _single(cfg)
    if not cfg.redis_url:
        raise PictagError(f"`pictag serve {mode}` needs redis_url (in serve.yaml or --redis-url); without Redis use "
                          "`pictag serve`")  # fmt: skip
    return _api_processes(cfg, args.processes) if mode == "api" else _run_worker(cfg)


def _single(cfg) -> int:
    import dataclasses

    import uvicorn

    from pictag.serve.api import create_app

    cfg = dataclasses.replace(cfg, redis_url=None)
    print(f"pictag serve: http://{cfg.host}:{cfg.port} ({cfg.model}, in-process worker; page at /, API docs at /docs)")
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning")
    return 0


def _api_processes(cfg, processes: int) -> int:
    import os
    import shutil
    import tempfile

    import uvicorn

    from pictag.config import dump_config
    from pictag.serve.api import CONFIG_ENV, create_app

    print(f"pictag serve api: http://{cfg.host}:{cfg.port}, {processes} process(es), queue {cfg.redis_url}")
    if processes <= 1:
        uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning")
        return 0
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
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _run_worker(cfg) -> int:
    import logging
    import signal
    import threading

    from pictag.serve.service import create_service
    from pictag.serve.transport import create_transport
    from pictag.serve.worker import Worker, worker_name

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
    return 0
