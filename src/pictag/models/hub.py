"""Weights from the Hugging Face hub without a long hang when the machine is offline.

huggingface_hub retries a failed connection for about 45 seconds per file. A two-second probe first lets an
offline machine go straight to the local cache, and the error then says how to pass local weights instead, or to
fetch them ahead of time (`pictag.models.download`).
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from pictag.errors import PictagError


def endpoint() -> str:
    """The hub's address: $HF_ENDPOINT (a mirror, or a stand-in), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.cache
def hub_online() -> bool:
    """Whether the hub answers; if not, switch huggingface_hub to cache-only mode for this process."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        url = urlparse(endpoint())
        port = url.port or (80 if url.scheme == "http" else 443)
        try:
            socket.create_connection((url.hostname or "huggingface.co", port), timeout=2).close()
            return True
        except OSError:
            pass
    import huggingface_hub.constants

    # The library read HF_HUB_OFFLINE when first imported, possibly before it was set.
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    return False


class FetchError(PictagError):
    """Weights that could not be fetched from the hub, nor found in the cache."""


def fetch_failed(spec: str, exc: BaseException, fix: str) -> FetchError:
    """The one-line error for weights that could not be fetched, naming what was tried and the fix."""
    if not hub_online():
        fetch = "`pictag download` on a connected machine" if _cli() else "pictag.download() on a connected machine"
        return FetchError(
            f"could not load weights for {spec}: not in the local cache, and the hub is unreachable. {fix}, "
            f"or fetch them with {fetch}"
        )
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    return FetchError(f"could not load weights for {spec} from the Hugging Face hub ({reason[:160]}). {fix}")


def _cli() -> bool:
    from pictag.errors import COMMAND_LINE

    return COMMAND_LINE.get()
