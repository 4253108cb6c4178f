"""Checks on everything a client sends: server-side paths, body size, image size, URLs and tokens.

Each check fails with an `ApiError`, which the app turns into a 4xx JSON answer.
"""

from __future__ import annotations

import hmac
import io
import os
import warnings
from pathlib import Path

from PIL import Image
from starlette.exceptions import HTTPException


class ApiError(Exception):
    """An answer other than success: HTTP status, a one-line message for the client, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def resolve_path(path: str, roots: list[str]) -> Path:
    """The real path of a server-side file, if it lies under one of the allowed roots.

    Symlinks and ".." are resolved before the check, so neither can lead outside a root.

    Raises:
        ApiError: 403 when paths are disabled or the file is outside every root; 404 when it does not exist.
    """
    if not roots:
        raise ApiError(403, "server-side paths are disabled: set allowed_roots in serve.yaml, or upload the image")
    if "\x00" in path:
        raise ApiError(400, "the path holds a NUL byte")
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, str(real)]) == real_root:
            if not real.is_file():
                raise ApiError(404, f"no such file under the allowed roots: {path}")
            return real
    raise ApiError(403, f"path {path} is outside the allowed roots")


def read_path(path: str, roots: list[str], max_bytes: int) -> bytes:
    """The bytes of an allowed server-side file, refusing files larger than `max_bytes`."""
    real = resolve_path(path, roots)
    size = real.stat().st_size
    if size > max_bytes:
        raise ApiError(413, f"{path} is {size:,} bytes, above the {max_bytes:,}-byte limit")
    return real.read_bytes()


def check_image(data: bytes, max_pixels: int) -> None:
    """Refuse, from the header alone, data that is not an image or has more than `max_pixels` pixels.

    The full decode happens on a worker; this keeps bombs and junk off the queue.
    """
    if not data:
        raise ApiError(400, "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data)).size
    except Image.DecompressionBombError:
        raise ApiError(413, f"the image has more than {max_pixels:,} pixels") from None
    except Exception:
        raise ApiError(415, "the data is not an image in a format the server reads (JPEG, PNG, WebP, ...)") from None
    if width * height > max_pixels:
        raise ApiError(413, f"the image is {width}x{height}, above the {max_pixels:,}-pixel limit")


async def fetch_url(url: str, allow: bool, max_bytes: int, timeout: float) -> bytes:
    """Download an image, within the size and time limits, if URL fetching is allowed."""
    if not allow:
        raise ApiError(403, "URL fetching is disabled: set allow_urls: true in serve.yaml, or upload the image")
    if not url.startswith(("http://", "https://")):
        raise ApiError(400, "only http:// and https:// URLs can be fetched")
    import httpx

    chunks, size = [], 0
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=3) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ApiError(422, f"fetching {url} answered HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ApiError(413, f"{url} is larger than the {max_bytes:,}-byte limit")
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ApiError(422, f"cannot fetch {url}: {type(exc).__name__}") from None
    return b"".join(chunks)


def check_token(authorization: str | None, token: str | None) -> None:
    """Require `Authorization: Bearer <token>` when a token is configured (compared in constant time)."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


class BodyLimit:
    """ASGI middleware: answer 413 to bodies over `max_bytes`, by Content-Length or while streaming.

    Bodies are counted as they stream in, so a client that sends no Content-Length is stopped all the same.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        import json

        body = json.dumps({"error": f"the request body is larger than the {self.max_bytes:,}-byte limit"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads a body into a 400.
    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is larger than the {max_bytes:,}-byte limit")
