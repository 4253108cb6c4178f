"""schemathesis against the app's own OpenAPI description: every route, positive and negative cases, and no 500;
then the JSON bodies again with every field also allowed to be any JSON value (numbers, objects, nested lists).

The app runs in single-machine mode with its worker and a tiny random model, so cases that pass validation are
classified for real. Bounded: `MAX_EXAMPLES` cases per operation, each answered within `request_timeout_s`.
"""

from __future__ import annotations

import collections
import copy
import re

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from conftest import jpeg_bytes, photos
from pictag.serve.api import create_app
from pictag.serve.config import ServeConfig

# Cases per operation, media type and mode (positive, negative); the audit found its 500 within 420 cases.
MAX_EXAMPLES = 25
CASES: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def api_schema(tiny_open_clip, tmp_path_factory):
    spec, checkpoint = tiny_open_clip
    root = tmp_path_factory.mktemp("fuzz_root")
    (root / "cat.jpg").write_bytes(jpeg_bytes(photos()["chelsea"]))
    cfg = ServeConfig(model=spec, checkpoint=str(checkpoint), device="cpu", labels="cat,dog", max_wait_ms=1,
                      allowed_roots=[str(root)], max_upload_bytes=1_000_000, request_timeout_s=10)  # fmt: skip
    app = create_app(cfg)
    # The context runs the app's lifespan (its worker thread); schemathesis's own calls reach the same app.
    with TestClient(app):
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def bodies(operation) -> list[str | None]:
    """Each media type the operation's body may have (None: no body), so JSON and multipart are both fuzzed."""
    body = operation.definition.raw.get("requestBody")
    return list(body["content"]) if body else [None]


def fuzz(operation, media_type: str | None, mode: GenerationMode, failures: list[str]) -> None:
    """Run MAX_EXAMPLES cases of one operation, body media type and mode; record the 500s."""

    @given(case=operation.as_strategy(generation_mode=mode, media_type=media_type))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case):
        response = case.call()
        CASES[operation.label] += 1
        if response.status_code >= 500:
            CASES["500"] += 1
            failures.append(
                f"{operation.label} ({media_type}, {mode.value}): {response.status_code} {response.text[:200]}"
            )

    try:
        run()
    except Unsatisfiable:  # no negative case exists for an operation without inputs (GET /healthz)
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_no_route_answers_500(api_schema):
    # schemathesis's own pytest decorator (from_fixture) does not run under pytest 9, so the loop is written out:
    # every operation of the schema, every body media type, positive and negative cases.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]
    failures: list[str] = []
    for operation in operations:
        for media_type in bodies(operation):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, media_type, mode, failures)
    total = sum(n for label, n in CASES.items() if label != "500")
    print(
        f"\nschemathesis: {total} cases over {len(operations)} operations, {CASES['500']} answered 500: {dict(CASES)}"
    )
    assert not failures, "\n".join(failures[:10])


def test_openapi_defines_every_schema_it_references(api_schema):
    text = str(api_schema.raw_schema)
    defined = set(api_schema.raw_schema["components"]["schemas"])
    referenced = set(re.findall(r"#/components/schemas/(\w+)", text))
    assert referenced and referenced <= defined, f"referenced, not defined: {referenced - defined}"


def widened(raw: dict) -> dict:
    """The schema, where every field of a JSON body may also be any JSON value: numbers, objects, nested lists.

    Only JSON bodies: a form's fields are text whatever the client means (and schemathesis mixes a request body's
    media types whichever one `as_strategy` is given).
    """
    raw = copy.deepcopy(raw)
    for path in raw["paths"].values():
        for operation in path.values():
            content = operation.get("requestBody", {}).get("content", {})
            content.pop("multipart/form-data", None)
    schemas = raw["components"]["schemas"]
    for name in ("ImageInput", "ClassifyJSON", "JobJSON"):
        properties = schemas[name]["properties"]
        for key, prop in properties.items():
            properties[key] = {"anyOf": [prop, {"type": "array", "items": {}}, {}]}
    return raw


def test_items_of_any_type_and_nesting_are_answered_4xx_in_one_line(api_schema):
    schema = schemathesis.openapi.from_dict(widened(api_schema.raw_schema))
    schema.app = api_schema.app
    operations = [op for op in (r.ok() for r in schema.get_all_operations()) if op.method.upper() == "POST"]
    assert len(operations) == 2, [op.label for op in operations]
    answers: collections.Counter = collections.Counter()
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE, media_type="application/json"))
        @settings(max_examples=4 * MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case):
            response = case.call()
            answers[response.status_code] += 1
            error = response.json().get("error", "") if response.status_code >= 400 else ""
            if response.status_code >= 500 or "\n" in error or len(response.content) > 2000:
                failures.append(f"{case.operation.label}: {response.status_code} {response.text[:200]}")

        run()
    print(f"\nschemathesis, fields of any type: {answers.total()} cases, answers by status {dict(answers)}")
    assert not failures, "\n".join(failures[:10])
