"""One factory for every backbone: `create_model("scheme:name/tag")`, dispatched through registered backends."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pictag.errors import PictagError
from pictag.registry import Registry

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
    """How to build encoders of one scheme and which names it knows.

    Attributes:
        scheme: The spec's prefix ("open_clip", "hf", ...).
        create: `create(spec, checkpoint=, random_weights=)`, the encoder of a parsed spec.
        list_models: The names it knows (offline).
        help: One line for `pictag models`.
        has_tags: Whether a name carries a weight tag after "/".
        rebuild: `rebuild(spec, files, meta)`, the architecture with random weights for a run directory to load its
            own weights into; `files` is the run's folder of this backbone's files (config, tokenizer), `meta` its
            pictag.json. None: a run cannot be trained on this scheme.
        check: Refuses, with the fix, a folder given without a scheme that this scheme would otherwise claim.
    """

    scheme: str
    create: Callable[..., Encoder]
    list_models: Callable[[], Iterable[str]]
    help: str
    has_tags: bool = False
    rebuild: Callable[[ModelSpec, Path, dict], Encoder] | None = None
    check: Callable[[str], object] | None = None


# Each backend module exposes its `BACKEND`, imported the first time its scheme is used; the heavy libraries inside
# are imported only when a model is built. A plug-in adds a scheme with `BACKENDS.register(scheme, backend)`.
BACKENDS: Registry[Backend] = Registry(
    "model scheme",
    {
        "hf": "pictag.models.hf_backend:BACKEND",
        "open_clip": "pictag.models.open_clip_backend:BACKEND",
        "pair": "pictag.models.pair:BACKEND",
        "run": "pictag.models.run_dir:BACKEND",
        "timm": "pictag.models.timm_backend:BACKEND",
    },
)


def get_backend(scheme: str) -> Backend:
    """The registered backend of a scheme (run directories rebuild their architecture through it).

    Raises:
        PictagError: an unknown scheme, or a backend whose module fails to import.
    """
    return BACKENDS.get(scheme)


def parse_spec(spec: str) -> ModelSpec:
    """Split "scheme:name/tag"; only open_clip names carry a weight tag, since hf names contain "/" themselves.

    A path without a scheme is a pictag run directory ("runs/x", i.e. "run:runs/x").
    """
    scheme, sep, rest = spec.partition(":")
    if (not sep or scheme not in BACKENDS) and os.path.isdir(os.path.expanduser(spec)):
        get_backend("run").check(spec)  # a folder that is not a run is refused here, with what to use instead
        return ModelSpec("run", spec)
    if not sep or scheme not in BACKENDS or not rest:
        schemes = ", ".join(f"{s}:" for s in BACKENDS.names())
        raise PictagError(
            f"model spec {spec!r} must start with one of {schemes} e.g. {DEFAULT_MODEL}, or be a run directory"
        )
    if get_backend(scheme).has_tags and "/" in rest:
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
    encoder = get_backend(parsed.scheme).create(parsed, checkpoint=checkpoint, random_weights=random_weights)
    torch_device, encoder.autocast_dtype = resolve_device(device, precision)
    return encoder.to(torch_device)


def list_models(scheme: str | None = None) -> list[str]:
    """Known model specs, with weight tags where the backend has them (offline: what the installed libraries know)."""
    backends = [get_backend(name) for name in ([scheme] if scheme else BACKENDS.names())]
    return [f"{b.scheme}:{name}" for b in backends for name in b.list_models()]


def unknown_name(scheme: str, name: str, known: Iterable[str]) -> PictagError:
    """The error for a name a backend does not know, suggesting the closest ones."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = (
        f"; did you mean {', '.join(f'{scheme}:{c}' for c in close)}?" if close else f"; see `pictag models {scheme}`"
    )
    return PictagError(f"unknown {scheme} model {name!r}{hint}")
