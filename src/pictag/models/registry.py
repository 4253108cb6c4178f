"""One factory for every backbone: `create_model("scheme:name/tag")`, dispatched through registered backends."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pictag.errors import PictagError

if TYPE_CHECKING:
    from pictag.models.base import Encoder

log = logging.getLogger(__name__)

DEFAULT_MODEL = "open_clip:ViT-B-32/openai"


def default_model() -> str:
    """The model used when none is named: $PICTAG_MODEL if set (a deployment's or a test's choice), else ViT-B-32."""
    return os.environ.get("PICTAG_MODEL") or DEFAULT_MODEL


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `scheme:name` with an optional `/tag` naming the weights (open_clip only)."""

    scheme: str
    name: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.name}" + (f"/{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class Backend:
    """How to build encoders of one scheme (`create(spec, checkpoint=, random_weights=)`) and which names it knows."""

    scheme: str
    create: Callable[..., Encoder]
    list_models: Callable[[], Iterable[str]]
    help: str
    has_tags: bool = False


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Make a scheme available to `create_model` and `list_models`."""
    _BACKENDS[backend.scheme] = backend


def get_backend(scheme: str) -> Backend:
    """The registered backend of a scheme (run directories rebuild their architecture through it)."""
    _load_backends()
    return _BACKENDS[scheme]


def _load_backends() -> None:
    # Importing registers them; the heavy libraries inside are imported only when a model is built.
    from pictag.models import hf_backend, open_clip_backend, pair, run_dir, timm_backend  # noqa: F401


def parse_spec(spec: str) -> ModelSpec:
    """Split "scheme:name/tag"; only open_clip names carry a weight tag, since hf names contain "/" themselves.

    A path without a scheme is a pictag run directory ("runs/x", i.e. "run:runs/x").
    """
    _load_backends()
    scheme, sep, rest = spec.partition(":")
    if (not sep or scheme not in _BACKENDS) and os.path.isdir(os.path.expanduser(spec)):
        from pictag.models.run_dir import model_dir

        model_dir(spec)  # a folder that is not a run is refused here, with what to use instead
        return ModelSpec("run", spec)
    if not sep or scheme not in _BACKENDS or not rest:
        schemes = ", ".join(f"{s}:" for s in _BACKENDS)
        raise PictagError(
            f"model spec {spec!r} must start with one of {schemes} e.g. {DEFAULT_MODEL}, or be a run directory"
        )
    if _BACKENDS[scheme].has_tags and "/" in rest:
        name, tag = rest.split("/", 1)
        return ModelSpec(scheme, name, tag or None)
    return ModelSpec(scheme, rest)


def create_model(
    spec: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    random_weights: bool = False,
    device: str | None = None,
    precision: str | None = None,
) -> Encoder:
    """Build an encoder with the preprocessing and tokenizer that belong to its weights.

    Args:
        spec: "open_clip:ARCH/TAG", "hf:ORG/NAME" (or "hf:/local/dir"), "timm:NAME", or a run directory from
            `pictag train` ("runs/x" or "run:runs/x"; `pictag.models.run_dir.load_run` also gives its head);
            `default_model()` if None.
        checkpoint: A local weights file loaded into the named architecture instead of downloading.
        random_weights: Build the architecture with random weights (tests, benchmarks); logs a warning.
        device: "cuda", "cuda:1", "mps" or "cpu"; chosen automatically when None.
        precision: "fp32", "fp16", "bf16" or "tf32"; chosen for the device when None.

    Raises:
        PictagError: unknown scheme or name, missing checkpoint, or weights that cannot be fetched.
    """
    from pictag.device import resolve_device

    parsed = parse_spec(spec or default_model())
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise PictagError(f"checkpoint {checkpoint} does not exist")
    if random_weights:
        log.warning("building %s with RANDOM weights: its predictions are meaningless", parsed)
    encoder = _BACKENDS[parsed.scheme].create(parsed, checkpoint=checkpoint, random_weights=random_weights)
    torch_device, encoder.autocast_dtype = resolve_device(device, precision)
    return encoder.to(torch_device)


def list_models(scheme: str | None = None) -> list[str]:
    """Known model specs, with weight tags where the backend has them (offline: what the installed libraries know)."""
    _load_backends()
    backends = [_BACKENDS[scheme]] if scheme else _BACKENDS.values()
    return [f"{b.scheme}:{name}" for b in backends for name in b.list_models()]


def unknown_name(scheme: str, name: str, known: Iterable[str]) -> PictagError:
    """The error for a name a backend does not know, suggesting the closest ones."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = (
        f"; did you mean {', '.join(f'{scheme}:{c}' for c in close)}?" if close else f"; see `pictag models {scheme}`"
    )
    return PictagError(f"unknown {scheme} model {name!r}{hint}")
