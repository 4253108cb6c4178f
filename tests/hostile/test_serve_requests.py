"""Hostile HTTP requests against the serving API in single-machine mode, with a real tiny model.

Path escapes, files sent for text fields, templates that are not strings or hold format fields, deep and large
bodies, slivers of images, and auth on every /v1 route: each is a JSON 4xx naming what to change, never a 500.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import ROOT, jpeg_bytes, photos
from pictag.serve.api import create_app
from pictag.serve.config import ServeConfig
from pictag.serve.security import ApiError, load_json

TOKEN = "hostile-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABELS = "cat,dog,coffee"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile_serve")
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "cat.jpg").write_bytes(jpeg_bytes(photos()["chelsea"]))
    (outside / "secret.jpg").write_bytes(jpeg_bytes(photos()["camera"]))
    os.symlink(outside / "secret.jpg", allowed / "escape.jpg")
    os.symlink(outside, allowed / "door")
    return allowed


@pytest.fixture(scope="module")
def client(tiny_open_clip, root):
    spec, checkpoint = tiny_open_clip
    cfg = ServeConfig(model=spec, checkpoint=str(checkpoint), device="cpu", max_wait_ms=1, auth_token=TOKEN,
                      allowed_roots=[str(root)], max_upload_bytes=2_000_000, request_timeout_s=20)  # fmt: skip
    with TestClient(create_app(cfg), headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def cat() -> bytes:
    return jpeg_bytes(photos()["chelsea"])


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def assert_client_error(r: httpx.Response, status: int | None = None, words: str = "") -> dict:
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    assert status is None or r.status_code == status, f"{r.status_code}: {r.text[:300]}"
    body = r.json()
    assert words in body["error"] and "Traceback" not in r.text, body
    return body


# --- server-side paths ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, status",
    [
        ("a" * 300 + ".jpg", 400),  # a component above NAME_MAX (255)
        ("a" * 5000, 400),  # above PATH_MAX
        ("/".join(["b" * 200] * 30), 400),  # many components, each legal, too long together
        ("../outside/secret.jpg", 403),
        ("escape.jpg", 403),  # a symlink out
        ("door/secret.jpg", 403),  # a symlinked folder out
        ("cat.jpg/more", 404),  # a file used as a folder
        ("nope.jpg", 404),
        ("\udcff.jpg", 404),  # the byte 0xff, as Python spells undecodable names: a legal name, not there
        ("\ud800.jpg", 400),  # a lone surrogate no file name can hold
        ("cat\x00.jpg", 400),
        ("", 400),  # an empty path is no image
    ],
)
def test_server_paths_of_any_shape_are_4xx(client, root, name, status):
    body = json.dumps({"path": f"{root}/{name}" if name else "", "labels": LABELS})  # \udcff escaped, as JSON may
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert_client_error(r, status)


def test_a_path_inside_the_root_still_works(client, root):
    r = client.post("/v1/classify", json={"path": str(root / "cat.jpg"), "labels": LABELS})
    assert r.status_code == 200, r.text


# --- form fields --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["path", "url", "labels", "templates", "top_k"])
@pytest.mark.parametrize("route", ["/v1/classify", "/v1/jobs"])
def test_a_file_sent_for_a_text_field_is_refused(client, cat, field, route):
    files = [("image", ("cat.jpg", cat)), (field, ("x.txt", b"cat,dog"))]
    data = {"labels": LABELS} if field != "labels" else {}
    r = client.post(route, files=files, data=data)
    assert_client_error(r, None)
    if route == "/v1/jobs":  # room for two files: the field's own check answers
        assert field in r.json()["error"] and "not a file" in r.json()["error"]


def test_text_sent_for_the_image_field_is_refused(client):
    r = client.post("/v1/classify", files={"image": (None, "cat.jpg")}, data={"labels": LABELS})
    assert_client_error(r, 422, "file upload")


# --- templates ------------------------------------------------------------------------------------------------------
BAD_TEMPLATES = [[1, 2], [{"a": 1}], [None], [["a {}"]], ["a {x} {}"], ["{0.__class__}"], ["{1}"], ["{}{}"], ["{"],
                 ["no field"], ["{!r}"], ["{:>99999999}"], []]  # fmt: skip


@pytest.mark.parametrize("templates", BAD_TEMPLATES, ids=[json.dumps(t) for t in BAD_TEMPLATES])
def test_bad_templates_are_refused_as_json_and_as_form(client, cat, templates):
    as_json = client.post("/v1/classify", json={"image_base64": "", "labels": LABELS, "templates": templates})
    as_form = client.post("/v1/classify", files={"image": ("c.jpg", cat)},
                          data={"labels": LABELS, "templates": json.dumps(templates)})  # fmt: skip
    for r in (as_json, as_form):
        assert_client_error(r)


def test_templates_with_one_field_and_literal_braces_classify(client, cat):
    r = client.post("/v1/classify", files={"image": ("c.jpg", cat)},
                    data={"labels": LABELS, "templates": '["a {{photo}} of a {}."]'})  # fmt: skip
    assert r.status_code == 200, r.text


# --- bodies ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opening, closing", [(b"[", b"]"), (b'{"a":', b"}")])
def test_a_body_nested_100000_deep_is_refused_before_parsing(client, opening, closing):
    body = opening * 100_000 + b"1" + closing * 100_000
    started = time.perf_counter()
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert_client_error(r, 400, "max_json_depth")
    assert time.perf_counter() - started < 5


def test_brackets_inside_strings_do_not_count_as_depth(client):
    r = client.post("/v1/classify", json={"labels": ["[" * 100, "{" * 100], "image_base64": ""})
    assert_client_error(r, 400, "exactly one image")


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_is_413_with_or_without_content_length(client, chunked):
    body = b'{"labels": "' + b"a" * 2_500_000 + b'"}'
    content = iter([body[:1_000_000], body[1_000_000:]]) if chunked else body
    r = client.post("/v1/classify", content=content, headers={"content-type": "application/json"})
    assert_client_error(r, 413, "limit")


def test_labels_above_the_limit_are_refused_before_they_are_checked(client):
    r = client.post("/v1/classify", json={"path": "x", "labels": ["same"] * 40_000})
    assert_client_error(r, 400, "max_labels")  # not "appear more than once": the count comes first


@pytest.mark.parametrize("field", ["labels", "templates"])
def test_lone_surrogates_in_labels_or_templates_are_refused(client, field):
    value = ["a {}", "\udcff {}"] if field == "templates" else ["cat", "\udcff"]
    body = json.dumps({"image_base64": "", "labels": LABELS, field: value})
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert_client_error(r, 400, "not valid Unicode")


# --- images ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(20000, 1), (1, 20000), (10000, 1), (5100, 100)])
def test_slivers_are_refused_from_their_header_naming_the_limit(client, size):
    data = png(*size)
    started = time.perf_counter()
    r = client.post("/v1/classify", files={"image": ("thin.png", data)}, data={"labels": LABELS})
    assert_client_error(r, 413, "max_aspect_ratio")
    assert time.perf_counter() - started < 2  # the audit's 20000x1 took 13 s and 4 GB


# --- auth ---------------------------------------------------------------------------------------------------------
def flatten(routes, prefix: str = ""):
    """(method, path) of every route, also those of included routers (FastAPI keeps them apart)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flatten(inner.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "methods"):
            yield from ((method, prefix + route.path) for method in route.methods)


def test_every_v1_route_needs_the_token(client):
    routes = [(method, path) for method, path in flatten(client.app.routes) if path.startswith("/v1")]
    documented = client.get("/openapi.json").json()["paths"]
    assert {(m.upper(), p) for p in documented if p.startswith("/v1") for m in documented[p]} <= set(routes)
    assert {path for _, path in routes} >= {"/v1/info", "/v1/classify", "/v1/jobs", "/v1/jobs/{job_id}"}
    for method, path in routes:
        url = path.replace("{job_id}", "0" * 32)
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            r = client.request(method, url, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path, r.text)
    assert client.get("/v1/info").status_code == 200
    for open_route in ("/healthz", "/readyz", "/metrics", "/"):
        assert client.get(open_route, headers={"Authorization": ""}).status_code == 200, open_route


def test_openapi_declares_the_bearer_scheme(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- the event loop -----------------------------------------------------------------------------------------------
def test_healthz_answers_while_a_huge_request_is_parsed(tiny_open_clip):
    """300,000 labels take a second of CPU to read and check; /healthz must not wait for it (it waited 15 s)."""
    spec, checkpoint = tiny_open_clip
    cfg = ServeConfig(model=spec, checkpoint=str(checkpoint), max_labels=2_000_000, max_upload_bytes=50_000_000)
    app = create_app(cfg)
    body = json.dumps({"labels": [f"label{i}" for i in range(300_000)]}).encode()  # no image: 400 once parsed

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            started = time.perf_counter()
            heavy = asyncio.create_task(
                http.post("/v1/classify", content=body, headers={"content-type": "application/json"})
            )
            pings = []
            while not heavy.done():
                sent = time.perf_counter()
                assert (await http.get("/healthz")).status_code == 200
                pings.append(time.perf_counter() - sent)
                await asyncio.sleep(0.01)
            return (await heavy), time.perf_counter() - started, pings

    response, heavy_s, pings = asyncio.run(scenario())
    assert response.status_code == 400 and "exactly one image" in response.json()["error"]
    assert len(pings) >= 3 and max(pings) < heavy_s / 2, (
        f"heavy request {heavy_s:.2f}s, slowest /healthz {max(pings):.2f}s"
    )


# --- docs/security.md stays true ------------------------------------------------------------------------------------
def test_security_doc_lists_every_limit_and_its_example_loads(tmp_path):
    import dataclasses
    import re

    from pictag.config import load_config

    doc = (ROOT / "docs" / "security.md").read_text()
    limits = {f.name for f in dataclasses.fields(ServeConfig) if f.name.startswith("max_") or f.name.endswith("_s")}
    limits.discard("max_wait_ms")  # the batching window: it bounds no input
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, re.M))
    assert limits <= documented, limits - documented
    config = tmp_path / "serve.yaml"
    config.write_text(re.search(r"```yaml\n(.*?)```", doc, re.S)[1])
    assert load_config(ServeConfig, config).max_aspect_ratio == 20


# --- the depth check, as a property ---------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9', max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), inner, max_size=3)
    ),
    max_leaves=40,
)


def nesting(value) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    return 1 + max(map(nesting, value), default=0) if isinstance(value, list) else 0


@settings(max_examples=300, deadline=None, database=None)
@given(value=JSON_VALUES, limit=st.integers(1, 12), ascii_only=st.booleans())
def test_the_depth_check_agrees_with_the_parsed_nesting(value, limit, ascii_only):
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    if nesting(value) > limit:
        with pytest.raises(ApiError, match="max_json_depth"):
            load_json(body, limit, max_values=10**9)
    else:
        assert load_json(body, limit, max_values=10**9) == value
