"""The HTTP API in single-machine mode (in-process queue and worker), with a real tiny model."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import jpeg_bytes, photos, subprocess_env
from pictag.serve.api import create_app
from pictag.serve.config import ServeConfig

LABELS = "cat,rocket,coffee"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve_roots")
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "cat.jpg").write_bytes(jpeg_bytes(photos()["chelsea"]))
    (outside / "secret.jpg").write_bytes(jpeg_bytes(photos()["camera"]))
    os.symlink(outside / "secret.jpg", allowed / "escape.jpg")
    return allowed, outside


@pytest.fixture(scope="module")
def client(tiny_open_clip, roots):
    spec, checkpoint = tiny_open_clip
    cfg = ServeConfig(
        model=spec,
        checkpoint=str(checkpoint),
        device="cpu",
        max_wait_ms=2,
        allowed_roots=[str(roots[0])],
        max_upload_bytes=300_000,
        max_pixels=1_000_000,
    )
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.fixture(scope="module")
def cat() -> bytes:
    return jpeg_bytes(photos()["chelsea"])


def test_multipart_upload(client, cat):
    r = client.post("/v1/classify", files={"image": ("cat.jpg", cat)}, data={"labels": LABELS, "top_k": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "open_clip:pictag-tiny" and len(body["labels"]) == 2
    scores = [x["score"] for x in body["labels"]]
    assert scores == sorted(scores, reverse=True) and {x["label"] for x in body["labels"]} <= set(LABELS.split(","))


def test_json_base64_and_server_path_agree(client, cat, roots):
    via_b64 = client.post("/v1/classify", json={"image_base64": base64.b64encode(cat).decode(), "labels": LABELS})
    via_path = client.post("/v1/classify", json={"path": str(roots[0] / "cat.jpg"), "labels": LABELS.split(",")})
    assert via_b64.status_code == via_path.status_code == 200
    assert via_b64.json()["labels"] == via_path.json()["labels"]


@pytest.mark.parametrize("name", ["../outside/secret.jpg", "escape.jpg"])
def test_path_traversal_and_symlink_escape_are_refused(client, roots, name):
    r = client.post("/v1/classify", json={"path": str(roots[0]) + "/" + name, "labels": LABELS})
    assert r.status_code == 403 and "outside the allowed roots" in r.json()["error"]


def test_missing_path_is_404(client, roots):
    r = client.post("/v1/classify", json={"path": str(roots[0] / "nope.jpg"), "labels": LABELS})
    assert r.status_code == 404


def test_oversized_upload_is_413(client):
    big = os.urandom(400_000)
    r = client.post("/v1/classify", files={"image": ("big.jpg", big)}, data={"labels": LABELS})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    streamed = client.post("/v1/classify", content=iter([b"{" + b" " * 200_000, b" " * 200_000 + b"}"]),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert streamed.status_code == 413


def test_too_many_pixels_is_413(client):
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000)).save(buf, format="PNG")
    r = client.post("/v1/classify", files={"image": ("wide.png", buf.getvalue())}, data={"labels": LABELS})
    assert r.status_code == 413 and "pixel" in r.json()["error"]


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        (dict(files={"image": ("x.jpg", b"hello")}, data={"labels": LABELS}), 415, "not an image"),
        (dict(json={"image_base64": "***", "labels": LABELS}), 400, "base64"),
        (dict(json={"labels": LABELS}), 400, "exactly one image"),
        (dict(files={"image": ("c.jpg", b"x")}), 400, "no labels"),
        (dict(json={"url": "http://127.0.0.1:1/x.jpg", "labels": LABELS}), 403, "URL fetching is disabled"),
        (dict(json={"path": "/etc/passwd", "labels": "a,a"}), 400, "more than once"),
        (dict(json={"path": "/tmp/\u0000x.jpg", "labels": LABELS}), 400, "NUL"),
        (dict(json={"image_base64": "", "labels": LABELS, "templates": "/etc/passwd"}), 400, "unknown templates"),
        (dict(json={"image_base64": "", "labels": LABELS, "top_k": 0}), 422, "top_k"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"x", headers={"content-type": "text/plain"}), 415, "multipart"),
    ],
)
def test_bad_input_gets_a_json_4xx(client, kwargs, status, words):
    r = client.post("/v1/classify", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"] and "Traceback" not in r.text


def test_truncated_image_is_422_from_the_worker(client, cat):
    r = client.post("/v1/classify", files={"image": ("t.jpg", cat[: len(cat) // 3])}, data={"labels": LABELS})
    assert r.status_code == 422 and "decode" in r.json()["error"]


def test_job_reports_progress_and_results(client, cat, roots):
    body = {"images": [{"image_base64": base64.b64encode(cat).decode()}, {"path": str(roots[0] / "cat.jpg")}],
            "labels": LABELS, "top_k": 1}  # fmt: skip
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    for _ in range(200):
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "done":
            break
    assert job["done"] == job["total"] == 2 and job["progress"] == 1.0 and job["failed"] == 0
    assert job["results"][0]["labels"] == job["results"][1]["labels"] and len(job["results"][0]["labels"]) == 1
    assert client.get("/v1/jobs/unknown").status_code == 404


def test_job_multipart_with_a_bad_image_counts_a_failure(client, cat):
    files = [("image", ("a.jpg", cat)), ("image", ("b.jpg", cat[:2000]))]
    job_id = client.post("/v1/jobs", files=files, data={"labels": LABELS}).json()["id"]
    for _ in range(200):
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "done":
            break
    assert job["failed"] == 1 and job["results"][1]["status"] == 422


def test_health_metrics_page_and_docs(client, cat):
    client.post("/v1/classify", files={"image": ("cat.jpg", cat)}, data={"labels": LABELS})
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["live_workers"] == 1
    metrics = client.get("/metrics").text
    for name in ("pictag_queue_depth", "pictag_batch_size_bucket", "pictag_http_latency_seconds_bucket",
                 "pictag_http_errors_total", "pictag_worker_errors_total"):  # fmt: skip
        assert name in metrics
    assert 'pictag_http_requests_total{endpoint="/v1/classify",status="200"}' in metrics
    assert "drop" in client.get("/").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/jobs", "/v1/jobs/{job_id}", "/readyz", "/metrics"} <= set(paths)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_only_assets_the_app_serves(client, page):
    html = client.get(page)
    assert html.status_code == 200
    assets = re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'', html.text)
    urls = [a or b for a, b in assets]
    assert any(u.endswith(".js") for u in urls) and "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
        assert client.get(url).status_code == 200, url


def test_bearer_token(tiny_open_clip, cat, monkeypatch):
    spec, checkpoint = tiny_open_clip
    monkeypatch.setenv("PICTAG_TEST_TOKEN", "s3cret")
    cfg = ServeConfig(model=spec, checkpoint=str(checkpoint), device="cpu", auth_token="env:PICTAG_TEST_TOKEN")
    with TestClient(create_app(cfg)) as c:
        files, data = {"image": ("cat.jpg", cat)}, {"labels": LABELS}
        assert c.post("/v1/classify", files=files, data=data).status_code == 401
        wrong = c.post("/v1/classify", files=files, data=data, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = c.post("/v1/classify", files=files, data=data, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/v1/info").status_code == 401
        assert c.get("/v1/info", headers={"Authorization": "Bearer s3cret"}).json()["auth"] is True


def test_url_fetching_when_allowed(tiny_open_clip, roots):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(roots[0]))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    spec, checkpoint = tiny_open_clip
    cfg = ServeConfig(model=spec, checkpoint=str(checkpoint), device="cpu", allow_urls=True, max_upload_bytes=100_000)
    try:
        with TestClient(create_app(cfg)) as c:
            ok = c.post("/v1/classify", json={"url": f"{base}/cat.jpg", "labels": LABELS})
            assert ok.status_code == 200, ok.text
            missing = c.post("/v1/classify", json={"url": f"{base}/nope.jpg", "labels": LABELS})
            assert missing.status_code == 422 and "HTTP 404" in missing.json()["error"]
            local = c.post("/v1/classify", json={"url": "file:///etc/passwd", "labels": LABELS})
            assert local.status_code == 400
    finally:
        server.shutdown()


def test_the_api_process_imports_no_torch():
    # Every uvicorn process pays for what the API imports; only workers need the model.
    code = "import pictag.serve.api, sys; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
