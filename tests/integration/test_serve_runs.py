"""`pictag serve --model RUN` picks its service from the run: a classifier serves its classes, an arcface run votes
against a labelled gallery and shows its nearest images, a clip run is zero-shot over its classes; through real
Redis, API and worker processes."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image
from run_data import BACKBONE, arcface_run, classifier_run
from serving_stack import Stack

from conftest import subprocess_env
from pictag.cli.main import main
from pictag.errors import PictagError
from pictag.models.run_dir import save_run_model
from pictag.serve.config import ServeConfig
from pictag.testing import save_colour_objects


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return save_colour_objects(tmp_path_factory.mktemp("colours"), objects=2, views=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, colours):
    root = tmp_path_factory.mktemp("runs")
    return classifier_run(root / "classifier", colours), arcface_run(root / "arcface")


def _classify(url: str, path, **data) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", files={"image": ("x.png", path.read_bytes())}, data=data, timeout=90)


def test_the_run_picks_the_service(tmp_path, runs, capsys):
    classifier, arcface = runs
    assert ServeConfig(model=str(classifier)).service == "trained"
    assert ServeConfig(model=f"run:{arcface}", gallery="emb/").service == "gallery"
    assert ServeConfig(model="open_clip:ViT-B-32/openai").service == "zero-shot"
    clip = tmp_path / "clip"
    from pictag.models import create_model

    save_run_model(clip / "best", create_model(BACKBONE, random_weights=True), None, task="clip", classes=["a", "b"],
                   metrics={})  # fmt: skip
    config = ServeConfig(model=str(clip))
    assert (config.service, config.labels) == ("zero-shot", ["a", "b"])
    with pytest.raises(PictagError, match="pass --gallery STORE"):
        ServeConfig(model=str(arcface))
    with pytest.raises(PictagError, match="serves its own 4 classes and takes no labels"):
        ServeConfig(model=str(classifier), labels="cat,dog")
    # The same one line from the command line, before any model loads.
    assert main(["serve", "--model", str(arcface)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--labelled --model {arcface}" in err
    # A model that cannot encode text says what to serve instead, not a classify flag.
    assert main(["serve", "--model", BACKBONE, "--random-weights", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot encode text" in err and "--model RUN serves its classes" in err and "--head" not in err


def test_classifier_run_serves_its_classes_through_redis(tmp_path, runs, colours):
    config = {"model": str(runs[0]), "device": "cpu", "threads": 1, "top_k": 2, "max_wait_ms": 5}
    with Stack(tmp_path / "stack", config, env=subprocess_env()) as stack:
        stack.start(workers=1)
        info = httpx.get(f"{stack.url}/v1/info").json()
        assert info["service"] == "trained" and info["classes"] == ["blue", "green", "grey", "red"]
        answer = _classify(stack.url, colours / "green" / "green0_0.png")
        assert answer.status_code == 200, answer.text
        assert [x["label"] for x in answer.json()["labels"]][0] == "green" and len(answer.json()["labels"]) == 2
        refused = _classify(stack.url, colours / "green" / "green0_0.png", labels="cat,dog")
        assert refused.status_code == 400 and "send no labels" in refused.json()["error"]


def test_arcface_run_votes_against_its_gallery_through_redis(tmp_path, runs, colours):
    arcface = runs[1]
    gallery = tmp_path / "gallery"
    assert main(["embed", str(colours), "--labelled", "--model", str(arcface), "--out", str(gallery), "--device",
                 "cpu", "--workers", "0"]) == 0  # fmt: skip
    config = {"model": str(arcface), "gallery": str(gallery), "knn_k": 3, "device": "cpu", "threads": 1, "top_k": 3}
    with Stack(tmp_path / "stack", config, env=subprocess_env()) as stack:
        stack.start(workers=1)
        assert httpx.get(f"{stack.url}/v1/info").json()["service"] == "gallery"
        body = _classify(stack.url, colours / "blue" / "blue1_0.png").json()
        assert body["labels"][0]["label"] == "blue"
        nearest = body["neighbours"]
        assert len(nearest) == 3 and nearest[0]["key"] == "blue/blue1_0.png" and nearest[0]["label"] == "blue"
        assert [n["similarity"] for n in nearest] == sorted((n["similarity"] for n in nearest), reverse=True)
        thumbnail = Image.open(io.BytesIO(base64.b64decode(nearest[0]["thumbnail"].partition(",")[2])))
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 128
