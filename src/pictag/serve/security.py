"""Checks on everything a client sends: server-side paths, body size, image size, URLs and tokens.

Each check fails with an `ApiError`, which the app turns into a 4xx JSON answer.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.exceptions import HTTPException

from pictag.data.decode import DEFAULT_MAX_ASPECT_RATIO, DecodeError, ImageTooLarge, check_size


class ApiError(Exception):
    """An answer other than success: HTTP status, a one-line message for the client, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# Longest server-side path accepted (Linux's PATH_MAX): longer ones cannot name a file anyway.
MAX_PATH_CHARS = 4096
# How the OS's refusals of a path map to answers: the client named something it cannot have, or nothing at all.
_OS_STATUS = {errno.ENOENT: 404, errno.ENOTDIR: 404, errno.EACCES: 403, errno.EPERM: 403}


def resolve_path(path: str, roots: list[str]) -> Path:
    """The real path of a server-side file, if it lies under one of the allowed roots.

    Symlinks and ".." are resolved before the check, so neither can lead outside a root.

    Raises:
        ApiError: 403 when paths are disabled or the file is outside every root; 404 when it does not exist;
            400 for a path no file can have (NUL byte, too long, unencodable).
    """
    if not roots:
        raise ApiError(403, "server-side paths are disabled: set allowed_roots in serve.yaml, or upload the image")
    if "\x00" in path:
        raise ApiError(400, "the path holds a NUL byte")
    if len(path) > MAX_PATH_CHARS:
        raise ApiError(400, f"the path is {len(path):,} characters, above the {MAX_PATH_CHARS}-character limit")
    with _os_errors(path):
        real = Path(os.path.realpath(path))
        for root in roots:
            real_root = os.path.realpath(root)
            if os.path.commonpath([real_root, str(real)]) == real_root:
                if not real.is_file():
                    raise ApiError(404, f"no such file under the allowed roots: {_shown(path)}")
                return real
    raise ApiError(403, f"path {_shown(path)} is outside the allowed roots")


def read_path(path: str, roots: list[str], max_bytes: int) -> bytes:
    """The bytes of an allowed server-side file, refusing files larger than `max_bytes`."""
    real = resolve_path(path, roots)
    with _os_errors(path), open(real, "rb") as file:
        data = file.read(max_bytes + 1)  # never more, even if the file grows while it is read
    if len(data) > max_bytes:
        raise ApiError(413, f"{_shown(path)} is larger than the {max_bytes:,}-byte limit")
    return data


@contextlib.contextmanager
def _os_errors(path: str):
    """OS refusals of a client's path as 4xx answers: a 300-character name is the client's error, not a 500."""
    try:
        yield
    except OSError as exc:
        status = _OS_STATUS.get(exc.errno, 400)
        raise ApiError(status, f"cannot open {_shown(path)}: {exc.strerror or type(exc).__name__}") from None
    except (UnicodeError, ValueError):  # lone surrogates, NULs: no file has such a name
        raise ApiError(400, f"the path {_shown(path)} cannot name a file on this server") from None


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def check_image(data: bytes, max_pixels: int, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> None:
    """Refuse, from the header alone, data that is not an image or whose decoding and resizing would cost too much.

    The full decode happens on a worker; this keeps bombs, slivers and junk off the queue. The limits are
    `pictag.data.decode.check_size`'s, the same the worker and the batch jobs apply.
    """
    if not data:
        raise ApiError(400, "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data)).size
    except Image.DecompressionBombError:
        raise ApiError(413, f"the image has more than {max_pixels:,} pixels (max_pixels)") from None
    except Exception:
        raise ApiError(415, "the data is not an image in a format the server reads (JPEG, PNG, WebP, ...)") from None
    try:
        check_size(width, height, max_pixels, max_aspect_ratio)
    except ImageTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except DecodeError as exc:
        raise ApiError(415, str(exc)) from None


def load_json(body: bytes | str, max_depth: int, max_values: int, what: str = "the body"):
    """`body` parsed, once a scan has checked its depth and counted its values, before the parser builds anything.

    Every value a parser builds costs memory, and every value of the wrong type one validation error: a 20 MB
    list of numbers was 10 million of each (+1.4 GB, 8 s, before its 422). A request needs no more values than its
    limits allow, so `max_values` bounds both before either starts.

    The scan is linear, at C speed (about 0.1 s for 20 MB): escapes are dropped (so every quote left delimits a
    string), then everything but quotes, brackets and commas; the brackets and commas outside strings (an even
    number of quotes before them) step the depth up or down and count the values, summed in chunks. Each value
    but the first of a container follows a comma, so 1 + commas + opening brackets bounds the values (a container
    counts as two).

    Raises:
        ApiError: 400 naming the limit, or saying the body is not JSON.
    """
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    # Left to right, as JSON pairs them: an escaped backslash first, then an escaped quote.
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    codes = np.frombuffer(data, dtype=np.uint8)
    quotes_before, depth, values = 0, 0, 1
    for start in range(0, len(codes), _CHUNK):
        chunk = codes[start : start + _CHUNK]
        quotes = np.cumsum(chunk == ord('"'), dtype=np.int32) + quotes_before
        outside = (quotes & 1) == 0  # inside a string (its opening quote included): no structure
        depths = np.cumsum(np.where(outside, _STEP[chunk], 0), dtype=np.int32) + depth
        if depths.max() > max_depth:
            raise ApiError(400, f"{what} nests deeper than {max_depth} levels (max_json_depth)")
        values += int(np.count_nonzero(outside & _VALUE[chunk]))
        if values > max_values:
            break
        quotes_before, depth = int(quotes[-1]) & 1, int(depths[-1])
    if values > max_values:
        raise ApiError(400, f"{what} holds more than {max_values:,} values, the most a request within "
                            "max_labels, max_templates and max_job_items needs")  # fmt: skip
    try:
        return json.loads(body)
    except ValueError:  # RecursionError cannot happen: the depth is checked
        raise ApiError(400, f"{what} is not valid JSON") from None


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{},')
_CHUNK = 1 << 20
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1
_VALUE = np.zeros(256, dtype=bool)
_VALUE[list(b"[{,")] = True


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
