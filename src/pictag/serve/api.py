"""The HTTP API: `create_app(cfg)` builds a FastAPI app that validates requests, queues them on a transport and
answers with the workers' replies.

Without `redis_url` the app runs its own worker thread over an in-process queue (single-machine mode).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from pictag.errors import PictagError
from pictag.prompts import parse_labels, request_templates
from pictag.serve.config import ServeConfig
from pictag.serve.metrics import ApiMetrics, RecordRequests
from pictag.serve.security import (
    ApiError,
    BodyLimit,
    check_image,
    check_token,
    fetch_url,
    load_json,
    read_path,
)
from pictag.serve.service import Service, create_service
from pictag.serve.transport import create_transport
from pictag.serve.transport.base import Message, QueueFull, ReplyTo, Transport, TransportUnavailable
from pictag.serve.worker import Worker

log = logging.getLogger(__name__)

CONFIG_ENV = "PICTAG_SERVE_CONFIG"
# Form fields that hold text; a file sent under one of these names is refused, not read as text.
_TEXT_FIELDS = ("path", "url", "labels", "templates", "top_k")


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
    # The JSON model is referenced here, and defined under components.schemas by `_openapi`.
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

    def __init__(self, cfg: ServeConfig, transport: Transport | None = None, service: Service | None = None):
        self.cfg = cfg
        self.service = service
        self.token = cfg.token()
        self.default_labels = parse_labels(cfg.labels, cfg.labels_file) if cfg.labels or cfg.labels_file else None
        # What the page shows instead of a labels box: the classes of a run's trained head.
        self.classes = (cfg.run_meta() or {}).get("classes") if cfg.service == "trained" else None
        self.in_process = transport is None and not cfg.redis_url
        self.transport = transport if transport is not None else create_transport(cfg)
        self.metrics = ApiMetrics()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        if not self.in_process:
            return
        service = self.service
        if service is None:
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
    # Everything here that costs CPU in proportion to the request (JSON, base64, labels, image headers) runs in
    # the thread pool: on the event loop, one 40,000-label request held /healthz and every other client for 15 s.
    def params(self, labels, templates, top_k) -> dict:
        """Validated labels, templates and top_k of a request (None: the worker's defaults)."""
        cfg = self.cfg
        params: dict = {}
        if labels:
            params["labels"] = parse_labels(labels, max_labels=cfg.max_labels)
        elif not self.default_labels and cfg.service == "zero-shot":  # a run or a gallery brings its own classes
            raise ApiError(400, "no labels: send labels (e.g. labels=cat,dog), or set labels in serve.yaml")
        if templates:
            if isinstance(templates, str) and templates.lstrip().startswith("["):
                templates = load_json(templates, cfg.max_json_depth, cfg.max_templates + 1, "templates")
            params["templates"] = request_templates(templates, cfg.max_templates)
        if top_k is not None:
            try:
                top_k = int(top_k)
            except (TypeError, ValueError):
                raise ApiError(422, f"top_k must be a whole number, got {str(top_k)[:30]!r}") from None
            if top_k < 1:
                raise ApiError(422, "top_k must be at least 1")
            params["top_k"] = top_k
        return params

    def parse_json(self, body: bytes, many: bool) -> tuple[list[dict], dict]:
        """The image items and params of a JSON body, bounded in depth and values before it is parsed."""
        cfg = self.cfg
        # Labels and templates are one value each; an image is an object of at most three fields (four values).
        max_values = cfg.max_labels + cfg.max_templates + 4 * (cfg.max_job_items if many else 1) + 16
        data = load_json(body, cfg.max_json_depth, max_values)
        model = JobJSON if many else ClassifyJSON
        try:
            parsed = model.model_validate(data)
        except ValueError as exc:
            raise ApiError(422, f"invalid request: {_first_error(exc)}") from None
        params = self.params(parsed.labels, parsed.templates, parsed.top_k)
        if many:
            return [i.model_dump() for i in parsed.images], params
        return [parsed.model_dump(include={"image_base64", "path", "url"})], params

    def checked(self, data: bytes) -> bytes:
        """`data`, once its size and its header's pixels and shape pass the limits."""
        cfg = self.cfg
        if len(data) > cfg.max_upload_bytes:
            raise ApiError(413, f"the image is {len(data):,} bytes, above the {cfg.max_upload_bytes:,}-byte limit")
        check_image(data, cfg.max_pixels, cfg.max_aspect_ratio)
        return data

    async def image(self, image_base64=None, path=None, url=None, upload: bytes | None = None) -> bytes:
        """The bytes of the one image a request names, after the size and pixel checks."""
        given = [x for x in (upload, image_base64, path, url) if x]
        if len(given) != 1:
            raise ApiError(400, "send exactly one image: a file upload, image_base64, path or url")
        cfg = self.cfg
        if upload is not None:
            return await run_in_threadpool(self.checked, upload)
        if image_base64:
            return await run_in_threadpool(lambda: self.checked(_b64(image_base64)))
        if path:
            data = await run_in_threadpool(read_path, path, cfg.allowed_roots, cfg.max_upload_bytes)
        else:
            data = await fetch_url(url, cfg.allow_urls, cfg.max_upload_bytes, cfg.url_timeout_s)
        return await run_in_threadpool(self.checked, data)

    async def read(self, request: Request, many: bool) -> tuple[list[bytes], dict]:
        """Images and params from a multipart form or a JSON body."""
        ctype = request.headers.get("content-type", "")
        limit = self.cfg.max_job_items if many else 1
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=limit, max_fields=100)
            items: list[dict] = []
            fields: dict[str, list[str]] = {}
            for name, value in form.multi_items():
                if name == "image":
                    if not isinstance(value, UploadFile):
                        raise ApiError(422, "form field 'image' must be a file upload (send path or url as such)")
                    items.append(dict(upload=await value.read()))
                elif name in _TEXT_FIELDS:
                    if not isinstance(value, str):
                        raise ApiError(422, f"form field {name!r} must be text, not a file")
                    fields.setdefault(name, []).append(value)
            items += [dict(path=p) for p in fields.get("path", [])] + [dict(url=u) for u in fields.get("url", [])]
            labels, templates, top_k = (_one_or_list(fields.get(name)) for name in ("labels", "templates", "top_k"))
            if isinstance(top_k, list):
                raise ApiError(422, "send top_k once")
            params = await run_in_threadpool(self.params, labels, templates, top_k)
            if not items:
                items = [{}]
        elif ctype.startswith("application/json"):
            items, params = await run_in_threadpool(self.parse_json, await request.body(), many)
        else:
            raise ApiError(415, "send multipart/form-data (image=@file) or application/json (image_base64, path)")
        if len(items) > limit:
            raise ApiError(413, f"{len(items)} images, above the limit of {limit}")
        if many and not items:
            raise ApiError(400, "the job holds no images")
        return [await self.image(**item) for item in items], params


def create_app(cfg: ServeConfig, transport: Transport | None = None, service: Service | None = None) -> FastAPI:
    """The serving app for a config.

    Args:
        cfg: Serving options (serve.yaml).
        transport: Use this transport instead of the one the config names (tests).
        service: The in-process worker's service, already set up (`pictag serve` loads the model before it
            listens, so a model that cannot load is one line, not a failed startup); made and set up at startup
            when None.
    """
    state = App(cfg, transport, service)

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

    # Auth belongs to the router, not to each route, so a /v1 route cannot be added without it. HTTPBearer (which
    # checks nothing itself) declares the scheme in the OpenAPI description.
    async def authorize(request: Request, _scheme=Depends(HTTPBearer(auto_error=False))) -> None:
        check_token(request.headers.get("authorization"), state.token)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

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

    @v1.get("/info", summary="Model, default labels and limits")
    async def info():
        limits = ("max_upload_bytes", "max_pixels", "max_aspect_ratio", "max_labels", "max_templates",
                  "max_json_depth", "max_job_items", "request_timeout_s")  # fmt: skip
        return {
            "model": cfg.model,
            "service": cfg.service,
            "classes": state.classes,
            "gallery": cfg.gallery if cfg.service == "gallery" else None,
            "labels": state.default_labels,
            "templates": cfg.templates,
            "top_k": cfg.top_k,
            "auth": state.token is not None,
            **{name: getattr(cfg, name) for name in limits},
        }

    @v1.post(
        "/classify",
        summary="Classify one image and wait for the answer",
        openapi_extra=_request_body(ClassifyJSON, _form_schema("image")),
    )
    async def classify(request: Request):
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

    @v1.post(
        "/jobs",
        status_code=202,
        summary="Queue a batch of images; poll GET /v1/jobs/{id}",
        openapi_extra=_request_body(JobJSON, _form_schema("image")),
    )
    async def create_job(request: Request):
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

    @v1.get("/jobs/{job_id}", summary="A job's status, progress and results")
    async def get_job(job_id: str):
        job = await state.transport.job(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id} (unknown, or its results expired after job_ttl_s)")
        job["results"] = [_public(r) for r in job["results"]]
        return job

    app.include_router(v1)
    app.openapi = partial(_openapi, app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's OpenAPI description, plus the JSON request models that the routes' bodies reference.

    The routes read their bodies themselves (multipart or JSON), so FastAPI never sees these models.
    """
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ClassifyJSON, JobJSON):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(definition.pop("$defs", {}))
            schemas[model.__name__] = definition
    return app.openapi_schema


def create_app_from_env() -> FastAPI:
    """The app for the config file named by $PICTAG_SERVE_CONFIG (how `pictag serve api` starts uvicorn workers)."""
    from pictag.config import load_config

    return create_app(load_config(ServeConfig, os.environ[CONFIG_ENV]))


def _add_error_handlers(app: FastAPI, state: App) -> None:
    def error(status: int, message: str, reason: str, headers: dict | None = None) -> JSONResponse:
        state.metrics.errors.labels(reason).inc()
        # Messages quote the client's input, which JSON may carry as lone surrogates that UTF-8 cannot encode.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
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

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_request, _exc: ClientDisconnect):
        # The client left, or its header or body deadline closed the connection: nobody is left to read this.
        return error(400, "the client disconnected before its request was read", "client_disconnect")

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


def _one_or_list(values: list[str] | None) -> str | list[str] | None:
    # A field sent once is one value ("cat,dog"); sent several times, a list (one label or template each).
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _first_error(exc) -> str:
    # One error, and how many more: the answer stays one line however many items are wrong.
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    more = f" (and {len(errors) - 1:,} more errors)" if len(errors) > 1 else ""
    return (f"{where}: {first.get('msg')}" if where else str(first.get("msg"))) + more
