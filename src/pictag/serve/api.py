"""The HTTP API: `create_app(cfg)` builds a FastAPI app that validates requests, queues them on a transport and
answers with the workers' replies.

Without `redis_url` the app runs its own worker thread over an in-process queue (single-machine mode).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from pictag.errors import PictagError
from pictag.prompts import load_templates, parse_labels
from pictag.serve.config import ServeConfig
from pictag.serve.metrics import ApiMetrics, RecordRequests
from pictag.serve.security import ApiError, BodyLimit, check_image, check_token, fetch_url, read_path
from pictag.serve.service import create_service
from pictag.serve.transport import create_transport
from pictag.serve.transport.base import Message, QueueFull, ReplyTo, Transport, TransportUnavailable
from pictag.serve.worker import Worker

log = logging.getLogger(__name__)

CONFIG_ENV = "PICTAG_SERVE_CONFIG"
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_-]+")


class ImageInput(BaseModel):
    """One image, given exactly one way."""

    image_base64: str | None = Field(None, description="the encoded image (JPEG, PNG, WebP...), base64")
    path: str | None = Field(None, description="a file on the server, under one of allowed_roots")
    url: str | None = Field(None, description="an http(s) URL for the server to fetch (only if allow_urls)")


class LabelOptions(BaseModel):
    labels: list[str] | str | None = Field(None, description='labels, as a list or "cat,dog"; default: serve.yaml')
    templates: list[str] | str | None = Field(
        None, description='"simple", "imagenet80", or a list of templates with one {}; default: serve.yaml'
    )
    top_k: int | None = Field(None, ge=1, description="ranked labels to return; default: serve.yaml top_k")


class ClassifyJSON(ImageInput, LabelOptions):
    """POST /v1/classify as JSON."""


class JobJSON(LabelOptions):
    """POST /v1/jobs as JSON."""

    images: list[ImageInput]


def _form_schema(*image_fields: str) -> dict:
    props = {name: {"type": "string", "format": "binary"} for name in image_fields}
    props |= {
        "path": {"type": "string"},
        "url": {"type": "string"},
        "labels": {"type": "string", "description": "comma-separated"},
        "templates": {"type": "string", "description": "simple, imagenet80, or a JSON list of templates"},
        "top_k": {"type": "integer"},
    }
    return {"type": "object", "properties": props}


def _request_body(json_model: type[BaseModel], form: dict) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}},
            },
        }
    }


class App:
    """State shared by the routes of one app: config, transport, metrics, and the in-process worker if any."""

    def __init__(self, cfg: ServeConfig, transport: Transport | None = None):
        self.cfg = cfg
        self.token = cfg.token()
        self.default_labels = parse_labels(cfg.labels, cfg.labels_file) if cfg.labels or cfg.labels_file else None
        self.in_process = transport is None and not cfg.redis_url
        self.transport = transport if transport is not None else create_transport(cfg)
        self.metrics = ApiMetrics()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        if not self.in_process:
            return
        service = create_service(self.cfg)
        await asyncio.to_thread(service.setup)
        worker = Worker(service, self.transport, self.cfg.batch_size, self.cfg.max_wait_ms)
        self._thread = threading.Thread(target=worker.run, args=(self._stop,), name="pictag-worker", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        await self.transport.aclose()

    # --- request parsing ------------------------------------------------------------------------------------------
    def params(self, labels, templates, top_k) -> dict:
        """Validated labels, templates and top_k of a request (None: the worker's defaults)."""
        params: dict = {}
        if labels:
            params["labels"] = parse_labels(labels)
            if len(params["labels"]) > self.cfg.max_labels:
                raise ApiError(400, f"{len(params['labels'])} labels, above the limit of {self.cfg.max_labels}")
        elif not self.default_labels and self.cfg.service != "trained":  # a trained run brings its own classes
            raise ApiError(400, "no labels: send labels (e.g. labels=cat,dog), or set labels in serve.yaml")
        if templates:
            if isinstance(templates, str) and templates.startswith("["):
                templates = _json(templates, "templates")
            if isinstance(templates, str):
                # Only built-in names: a string is otherwise read as a file, and files are the server's business.
                is_builtin = (resources.files("pictag") / "templates" / f"{templates}.txt").is_file()
                if not _TEMPLATE_NAME.fullmatch(templates) or not is_builtin:
                    raise ApiError(400, f"unknown templates {templates!r}: use simple, imagenet80, or a list")
            elif len(templates) > 100:
                raise ApiError(400, f"{len(templates)} templates, above the limit of 100")
            load_templates(templates)
            params["templates"] = templates
        if top_k is not None:
            try:
                top_k = int(top_k)
            except ValueError:
                raise ApiError(400, f"top_k must be a whole number, got {top_k!r}") from None
            if top_k < 1:
                raise ApiError(400, "top_k must be at least 1")
            params["top_k"] = top_k
        return params

    async def image(self, image_base64=None, path=None, url=None, upload: bytes | None = None) -> bytes:
        """The bytes of the one image a request names, after the size and pixel checks."""
        given = [x for x in (upload, image_base64, path, url) if x]
        if len(given) != 1:
            raise ApiError(400, "send exactly one image: a file upload, image_base64, path or url")
        cfg = self.cfg
        if upload is not None:
            data = upload
        elif image_base64:
            data = _b64(image_base64)
        elif path:
            data = await asyncio.to_thread(read_path, path, cfg.allowed_roots, cfg.max_upload_bytes)
        else:
            data = await fetch_url(url, cfg.allow_urls, cfg.max_upload_bytes, cfg.url_timeout_s)
        if len(data) > cfg.max_upload_bytes:
            raise ApiError(413, f"the image is {len(data):,} bytes, above the {cfg.max_upload_bytes:,}-byte limit")
        check_image(data, cfg.max_pixels)
        return data

    async def read(self, request: Request, many: bool) -> tuple[list[bytes], dict]:
        """Images and params from a multipart form or a JSON body."""
        ctype = request.headers.get("content-type", "")
        limit = self.cfg.max_job_items if many else 1
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=limit, max_fields=100)
            uploads = [f for f in form.getlist("image") if not isinstance(f, str)]
            items = [dict(upload=await f.read()) for f in uploads]
            paths, urls = form.getlist("path"), form.getlist("url")
            items += [dict(path=p) for p in paths] + [dict(url=u) for u in urls]
            templates = form.getlist("templates")
            templates = templates[0] if len(templates) == 1 else templates
            params = self.params(form.get("labels"), templates, form.get("top_k"))
            if not items:
                items = [{}]
        elif ctype.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise ApiError(400, "the body is not valid JSON") from None
            model = JobJSON if many else ClassifyJSON
            try:
                parsed = model.model_validate(body)
            except ValueError as exc:
                raise ApiError(422, f"invalid request: {_first_error(exc)}") from None
            params = self.params(parsed.labels, parsed.templates, parsed.top_k)
            items = (
                [i.model_dump() for i in parsed.images]
                if many
                else [parsed.model_dump(include={"image_base64", "path", "url"})]
            )
        else:
            raise ApiError(415, "send multipart/form-data (image=@file) or application/json (image_base64, path)")
        if len(items) > limit:
            raise ApiError(413, f"{len(items)} images, above the limit of {limit}")
        if many and not items:
            raise ApiError(400, "the job holds no images")
        return [await self.image(**item) for item in items], params


def create_app(cfg: ServeConfig, transport: Transport | None = None) -> FastAPI:
    """The serving app for a config.

    Args:
        cfg: Serving options (serve.yaml).
        transport: Use this transport instead of the one the config names (tests).
    """
    state = App(cfg, transport)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await state.start()
        yield
        await state.stop()

    # /docs and /redoc from assets the app serves itself (FastAPI's default pages load them from a CDN, and stay
    # blank offline).
    app = FastAPIOffline(
        title="pictag",
        description="Zero-shot image classification with CLIP-family models. Labels are per request.",
        version="1",
        lifespan=lifespan,
    )
    app.state.pictag = state
    app.add_middleware(BodyLimit, max_bytes=cfg.max_upload_bytes)
    app.add_middleware(RecordRequests, metrics=state.metrics)
    _add_error_handlers(app, state)

    def authorize(request: Request) -> None:
        check_token(request.headers.get("authorization"), state.token)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return (resources.files("pictag") / "serve" / "static" / "index.html").read_text()

    @app.get("/healthz", summary="Liveness: the API process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the queue is reachable and at least one worker is alive")
    async def readyz():
        health = await state.transport.health()
        body = {"queue_depth": health.depth, "live_workers": health.live_workers}
        if health.live_workers < 1:
            return JSONResponse({"status": "no live worker", **body}, 503, headers={"Retry-After": "2"})
        return {"status": "ready", **body}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        try:
            health = await state.transport.health()
        except TransportUnavailable:
            health = None
        return Response(state.metrics.render(health), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info", summary="Model, default labels and limits")
    async def info():
        return {
            "model": cfg.model,
            "labels": state.default_labels,
            "templates": cfg.templates,
            "top_k": cfg.top_k,
            "auth": state.token is not None,
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_pixels": cfg.max_pixels,
        }

    @app.post(
        "/v1/classify",
        summary="Classify one image and wait for the answer",
        openapi_extra=_request_body(ClassifyJSON, _form_schema("image")),
    )
    async def classify(request: Request):
        authorize(request)
        started = time.perf_counter()
        images, params = await state.read(request, many=False)
        read = time.perf_counter()
        request_id = uuid.uuid4().hex
        timeout = cfg.request_timeout_s
        message = Message(ReplyTo(request_id=request_id), images[0], params, deadline=time.time() + timeout)
        await state.transport.submit([message])
        reply = await state.transport.wait(request_id, timeout)
        if reply is None:
            raise ApiError(504, f"no answer within request_timeout_s={timeout:g}s; retry, or add workers")
        if not reply["ok"]:
            raise ApiError(reply["status"], reply["error"])
        done = time.perf_counter()
        worker_ms = reply["result"]["worker_ms"]
        # Where the time went, for browsers' devtools and load tests: reading the request, the queue path, the model.
        timing = f"read;dur={(read - started) * 1000:.2f}, queue;dur={(done - read) * 1000 - worker_ms:.2f}, worker;dur={worker_ms:.2f}"
        body = {"id": request_id, **reply["result"], "latency_ms": round((done - started) * 1000, 2)}
        return JSONResponse(body, headers={"Server-Timing": timing})

    @app.post(
        "/v1/jobs",
        status_code=202,
        summary="Queue a batch of images; poll GET /v1/jobs/{id}",
        openapi_extra=_request_body(JobJSON, _form_schema("image")),
    )
    async def create_job(request: Request):
        authorize(request)
        images, params = await state.read(request, many=True)
        job_id = uuid.uuid4().hex
        await state.transport.create_job(job_id, len(images))
        messages = [Message(ReplyTo(job_id=job_id, index=i), image, params) for i, image in enumerate(images)]
        try:
            await state.transport.submit(messages)
        except (QueueFull, TransportUnavailable):
            await state.transport.delete_job(job_id)
            raise
        return {"id": job_id, "status": "queued", "total": len(images), "url": f"/v1/jobs/{job_id}"}

    @app.get("/v1/jobs/{job_id}", summary="A job's status, progress and results")
    async def get_job(job_id: str, request: Request):
        authorize(request)
        job = await state.transport.job(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id} (unknown, or its results expired after job_ttl_s)")
        job["results"] = [_public(r) for r in job["results"]]
        return job

    return app


def create_app_from_env() -> FastAPI:
    """The app for the config file named by $PICTAG_SERVE_CONFIG (how `pictag serve api` starts uvicorn workers)."""
    from pictag.config import load_config

    return create_app(load_config(ServeConfig, os.environ[CONFIG_ENV]))


def _add_error_handlers(app: FastAPI, state: App) -> None:
    def error(status: int, message: str, reason: str, headers: dict | None = None) -> JSONResponse:
        state.metrics.errors.labels(reason).inc()
        return JSONResponse({"error": message}, status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return error(exc.status, exc.message, str(exc.status), exc.headers)

    @app.exception_handler(PictagError)
    async def pictag_error(_request, exc: PictagError):
        return error(400, str(exc), "400")

    @app.exception_handler(QueueFull)
    async def queue_full(_request, exc: QueueFull):
        return error(503, f"{exc}; retry later", "queue_full", {"Retry-After": "1"})

    @app.exception_handler(TransportUnavailable)
    async def unavailable(_request, exc: TransportUnavailable):
        log.warning("%s", exc)
        return error(503, "the queue is unavailable; retry later", "queue_unavailable", {"Retry-After": "2"})

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), str(exc.status_code), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return error(422, f"invalid request: {_first_error(exc)}", "422")

    @app.exception_handler(Exception)
    async def internal(_request, exc: Exception):
        log.exception("internal error")
        return error(500, "internal error (logged on the server)", "500")


def _public(reply: dict | None) -> dict | None:
    if reply is None:
        return None
    return reply["result"] if reply["ok"] else {"error": reply["error"], "status": reply["status"]}


def _b64(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_base64 is not valid base64") from None


def _json(text: str, name: str):
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError(400, f"{name} is not valid JSON") from None


def _first_error(exc) -> str:
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
