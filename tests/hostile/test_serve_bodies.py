"""JSON bodies of many items of the wrong type: refused from a scan of the body before any value is built, or, within
the limits, answered with one error and a count, never one error per item (a 2 MB body of numbers cost +1.1 GB)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from pictag.serve.api import create_app
from pictag.serve.config import ServeConfig
from pictag.serve.security import ApiError, load_json

ITEMS = 200_000  # 200,000 errors were about +110 MB and 1 s of pydantic's before the scan


@pytest.fixture(scope="module")
def client(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    cfg = ServeConfig(model=spec, checkpoint=str(checkpoint), device="cpu", labels="cat,dog", max_wait_ms=1,
                      max_upload_bytes=4_000_000, request_timeout_s=20)  # fmt: skip
    with TestClient(create_app(cfg)) as c:
        yield c


def many(item) -> list:
    return [item] * ITEMS


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/classify", {"path": "x.jpg", "labels": many(1)}),
        ("/v1/classify", {"path": "x.jpg", "labels": many({})}),
        ("/v1/classify", {"path": "x.jpg", "labels": many(["a"])}),
        ("/v1/classify", {"path": "x.jpg", "templates": many(None)}),
        ("/v1/classify", {"path": "x.jpg", "ignored": many(True)}),  # keys the model does not know count too
        ("/v1/jobs", {"images": many(1)}),
        ("/v1/jobs", {"images": many({"path": 1})}),
        ("/v1/jobs", {"labels": many("a"), "images": [{"path": "x.jpg"}]}),  # strings are values like any other
        ("/v1/classify", many(0)),
    ],
    ids=[
        "labels-numbers",
        "labels-objects",
        "labels-lists",
        "templates-nulls",
        "unknown-key",
        "job-numbers",
        "job-bad-fields",
        "job-labels-strings",
        "top-level-list",
    ],  # fmt: skip
)
def test_a_body_of_more_values_than_a_request_needs_is_refused_before_parsing(client, route, body):
    r = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert "values, the most a request within max_labels, max_templates and max_job_items needs" in r.json()["error"]
    assert len(r.content) < 300


def test_a_templates_form_field_of_many_values_is_refused_the_same_way(client):
    field = json.dumps(many(1))  # a form field is at most 1 MB (starlette's part limit)
    r = client.post("/v1/classify", data={"labels": "cat,dog", "templates": field}, files={"image": ("x.jpg", b"x")})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"].startswith("templates holds more than 101 values") and len(r.content) < 300


def test_a_string_of_a_million_labels_is_counted_one_label_at_a_time(client):
    # One value, so past the scan; parse_labels reads one label at a time and stops at max_labels + 1.
    r = client.post("/v1/classify", json={"path": "x.jpg", "labels": "ab," * 1_000_000})
    assert r.status_code == 400 and "more than 1000 labels" in r.json()["error"], r.text[:300]


@pytest.mark.parametrize("field", ["labels", "templates"])
def test_items_of_the_wrong_type_within_the_limits_are_one_error_and_a_count(client, field):
    body = {"path": "x.jpg", field: [1] * 900}
    r = client.post("/v1/classify", json=body)
    assert r.status_code == 422, r.text[:300]
    error = r.json()["error"]
    assert error.startswith(f"invalid request: {field}.list[str].0: Input should be a valid string (and 9")
    assert error.endswith(" more errors)") and len(r.content) < 300


def test_a_job_at_its_limits_is_within_the_value_bound(client):
    # The bound is the most a request can need: max_labels labels, max_templates templates, max_job_items images of
    # three fields each. Such a request gets past the scan, and as far as its images (paths are off here).
    cfg = ServeConfig()
    images = [{"image_base64": None, "path": f"{i}.jpg", "url": None} for i in range(cfg.max_job_items)]
    body = {"labels": [f"l{i}" for i in range(cfg.max_labels)], "templates": ["a {}."] * cfg.max_templates,
            "top_k": 3, "images": images}  # fmt: skip
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 403 and "server-side paths are disabled" in r.json()["error"], r.text[:300]


def values(value) -> int:
    """Values in a parsed JSON document, containers included."""
    if isinstance(value, dict):
        value = list(value.values())
    return 1 + sum(map(values, value)) if isinstance(value, list) else 1


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(alphabet='[]{},"\\a\u00e9'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='[]{},"\\k', max_size=4), inner),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(value=JSON_VALUES, ascii_only=st.booleans())
def test_the_scan_counts_at_least_every_value_and_at_most_twice_as_many(value, ascii_only):
    body = json.dumps(value, ensure_ascii=ascii_only)
    n = values(value)
    assert load_json(body.encode(), 64, max_values=2 * n) == value
    assert load_json(body, 64, max_values=2 * n) == value  # a form field: text, not bytes
    with pytest.raises(ApiError, match=f"holds more than {n - 1:,} values"):
        load_json(body.encode(), 64, max_values=n - 1)
