"""`ServeConfig`: everything serve.yaml can say, with the safe choice as every default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pictag.data.limits import DEFAULT_MAX_ASPECT_RATIO
from pictag.errors import PictagError
from pictag.models.registry import default_model
from pictag.prompts import load_templates, read_once


@dataclass
class ServeConfig:
    """Options of `pictag serve`, read from serve.yaml and overridden by command-line flags.

    Attributes:
        service: What the workers serve, by registered name (see `pictag.serve.service`): "zero-shot" (labels per
            request), "trained" (a run's own classes, by its trained head), or "gallery" (a kNN vote of the labelled
            `gallery`, with the nearest gallery images). When unset, the model decides: a classifier or few-shot run
            serves its classes, an arcface run votes against `gallery`, any other model (a clip run: its classes by
            default) is zero-shot; with `gallery`, the gallery.
        model: Model spec, see `create_model` ($PICTAG_MODEL or open_clip:ViT-B-32/openai when unset).
        checkpoint: Local weights file for `model`.
        random_weights: Random weights (tests and benchmarks only).
        device: Worker device ("cpu", "cuda:0", ...); best available when None.
        precision: Worker precision; chosen for the device when None.
        engine: What runs the workers' model: torch, onnx, openvino or auto, as `pictag classify --engine`.
        threads: CPU threads of each worker's torch (torch's default when None).
        labels: Default labels when a request names none (list or comma-separated string).
        labels_file: Default labels, one per line.
        templates: Default prompt templates: "simple", "imagenet80", or a list of strings with one "{}".
        top_k: Default number of ranked labels per image.
        redis_url: Redis holding the queue; None in single-machine mode, which uses an in-process queue.
        queue: Name prefix of every Redis key this deployment uses, so several deployments can share a server.
        batch_size: Most requests a worker runs in one forward pass.
        max_wait_ms: Longest a worker holds the first request of a batch while waiting for more.
        max_queue: Queued requests above which the API answers 503 with Retry-After.
        visibility_timeout_s: How long a request may stay unanswered by its worker before another worker claims it.
        max_deliveries: Deliveries after which a request that keeps killing workers goes to the dead-letter stream.
        request_timeout_s: Time a synchronous request may take before the API answers 504.
        header_timeout_s: Time a client has to send a request's headers, from its first byte (or the
            connection's start) on; the connection is closed after it (slow clients, slowloris).
        body_timeout_s: Time a client has to send a request's whole body, once its headers are in; the
            connection is closed after it.
        job_ttl_s: How long job results stay readable.
        max_job_items: Most images in one job.
        max_upload_bytes: Largest request body.
        max_pixels: Largest image, in pixels (decompression-bomb guard), checked from its header.
        max_aspect_ratio: Largest ratio of an image's long side to its short side, checked from its header (a
            20000x1 image passes max_pixels, but resizing it to the model's input would take gigabytes).
        max_labels: Most labels in one request.
        max_templates: Most prompt templates in one request.
        max_json_depth: Deepest nesting of a JSON body, checked before it is parsed.
        allowed_roots: Folders whose files requests may name by server-side path; empty disables paths.
        allow_urls: Let requests name http(s) URLs for the server to fetch (off: the server could be made to reach
            internal hosts).
        url_timeout_s: Time limit of a URL fetch.
        auth_token: Bearer token required on /v1/*; None disables auth. "env:NAME" reads it from $NAME.
        gallery: Labelled embedding store (`pictag embed DIR --labelled --model MODEL`) whose nearest images vote
            for each image's label.
        knn_k: Gallery neighbours that vote, and the most nearest images an answer shows.
        knn_weights: How a neighbour's vote counts: uniform (1) or distance (1 / its L2 distance).
        label_cache_size: Label sets whose text prototypes a worker keeps in memory (all stay in the disk cache).
        host: Address the API listens on.
        port: Port the API listens on.
        processes: Uvicorn processes serving the API (`serve api`); not --workers, which means data-loading
            workers in every pictag command.
    """

    service: str | None = None
    model: str = field(default_factory=default_model)
    checkpoint: str | None = None
    random_weights: bool = False
    device: str | None = None
    precision: str | None = None
    engine: Literal["torch", "onnx", "openvino", "auto"] = "torch"
    threads: int | None = None
    labels: list[str] | str | None = None
    labels_file: str | None = None
    templates: str | list[str] = "simple"
    top_k: int = 5
    redis_url: str | None = None
    queue: str = "pictag"
    batch_size: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 1000
    visibility_timeout_s: float = 30.0
    max_deliveries: int = 3
    request_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    job_ttl_s: float = 3600.0
    max_job_items: int = 1000
    max_upload_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    max_labels: int = 1000
    max_templates: int = 100
    max_json_depth: int = 32
    allowed_roots: list[str] = field(default_factory=list)
    allow_urls: bool = False
    url_timeout_s: float = 10.0
    auth_token: str | None = None
    gallery: str | None = None
    knn_k: int = 10
    knn_weights: Literal["uniform", "distance"] = "uniform"
    label_cache_size: int = 64
    host: str = "127.0.0.1"
    port: int = 8000
    processes: int = 1

    def __post_init__(self):
        positive = ("batch_size", "knn_k", "max_queue", "max_deliveries", "max_upload_bytes", "max_pixels", "max_labels",
                    "max_templates", "max_json_depth", "max_aspect_ratio")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise PictagError(f"serve config: {name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_wait_ms", "visibility_timeout_s", "request_timeout_s", "url_timeout_s"):
            if getattr(self, name) < 0:
                raise PictagError(f"serve config: {name} cannot be negative (got {getattr(self, name)})")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not 0 < getattr(self, name) < float("inf"):
                raise PictagError(
                    f"serve config: {name} must be a positive number of seconds (got {getattr(self, name)})"
                )
        if isinstance(self.allowed_roots, str):
            self.allowed_roots = [self.allowed_roots]
        if not 1 <= self.port <= 65535:
            raise PictagError(f"serve config: port must be between 1 and 65535 (got {self.port})")
        self.labels, self.labels_file, self.templates = read_once(self.labels, self.labels_file, self.templates)
        if self.service is None:
            self.service = self._service_of_model()
        # The one check of templates, as every entry point makes it: a bad default would fail every request later.
        load_templates(self.templates, self.max_templates)

    def run_meta(self) -> dict | None:
        """The pictag.json of `model` when it is a run directory (read without torch), else None."""
        if not (self.model.startswith("run:") or os.path.isdir(os.path.expanduser(self.model))):
            return None
        from pictag.models.run_dir import read_meta

        return read_meta(self.model.removeprefix("run:"))

    def _service_of_model(self) -> str:
        """The service a model asks for (`service` unset); a clip run's classes become the default labels."""
        meta = self.run_meta()
        if self.gallery:
            return "gallery"
        if meta is None:
            return "zero-shot"
        task = meta.get("task")
        if task == "arcface":
            raise PictagError(
                f"serve config: {self.model} is an arcface run: it labels an image by its nearest labelled images; "
                f"pass --gallery STORE (from `pictag embed DIR --labelled --model {self.model}`)"
            )
        if task == "fusion":
            raise PictagError(
                f"serve config: {self.model} is a fusion run: it classifies products by image and text together; "
                f"classify a product table with `pictag classify TABLE --images DIR --model {self.model}`"
            )
        if meta.get("head"):
            if self.labels or self.labels_file:
                raise PictagError(
                    f"serve config: {self.model} serves its own {len(meta.get('classes') or [])} classes and takes "
                    "no labels: drop labels and labels_file"
                )
            return "trained"
        if not (self.labels or self.labels_file) and meta.get("classes"):
            self.labels = list(meta["classes"])  # a clip run: zero-shot over the classes it was tuned on
        return "zero-shot"

    def token(self) -> str | None:
        """The bearer token, read from the environment when written as "env:NAME"."""
        if self.auth_token and self.auth_token.startswith("env:"):
            name = self.auth_token[4:]
            value = os.environ.get(name)
            if not value:
                raise PictagError(f"serve config: auth_token names ${name}, which is unset or empty")
            return value
        return self.auth_token or None
