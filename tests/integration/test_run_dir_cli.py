"""`--model RUN` everywhere: classify into the run's own classes (top-k, calibration, resume guard), zero-shot with
a run's towers, embed, search and calibrate on a store embedded with a run."""

from __future__ import annotations

import pyarrow.csv as pacsv
import pytest
import torch
from PIL import Image

from pictag.cli.main import main
from pictag.config import load_config
from pictag.data import open_source
from pictag.errors import PictagError
from pictag.heads.base import create_head
from pictag.models import create_model
from pictag.models.run_dir import save_run_model
from pictag.pipeline.classify import _RESULT_DEFINING
from pictag.pipeline.job import Run
from pictag.pipeline.options import ClassifyConfig
from pictag.pipeline.plan import plan_units
from pictag.pipeline.runner import embed_all
from pictag.storage.parts import PartStore

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _read(path):
    return pacsv.read_csv(path).to_pylist()


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Solid colour images with a little noise, in class folders and flat (for classify)."""
    import numpy as np

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / "train" / name / f"{name}{i}.png")
    (root / "flat").mkdir()
    for image in (root / "train").rglob("*.png"):
        (root / "flat" / image.name).write_bytes(image.read_bytes())
    return root


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_open_clip, colours):
    """A run whose linear head starts from the class prototypes of the colours: a classifier that works."""
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    embedded = embed_all(open_source(str(colours / "train"), labelled=True), encoder, batch_size=16, workers=0)
    classes = sorted(COLOURS)
    labels = torch.tensor([classes.index(label) for label in embedded.labels])
    prototypes = torch.stack([embedded.features[labels == c].mean(0) for c in range(len(classes))])
    head = create_head("linear", prototypes=prototypes, scale=100.0)
    run = tmp_path_factory.mktemp("runs") / "colours"
    save_run_model(run / "best", encoder, head, task="classifier", classes=classes, metrics={})
    return run


def test_classify_with_a_run_uses_its_classes(tmp_path, colours, classifier_run):
    out = tmp_path / "preds.csv"
    assert main(["classify", str(colours / "flat"), "--model", str(classifier_run), "--top-k", "2", "--out", str(out),
                 "--workers", "0"]) == 0  # fmt: skip
    rows = _read(out)
    assert len(rows) == 12 and {r["label_2"] for r in rows} <= set(COLOURS)
    accuracy = sum(r["key"].startswith(r["label"]) for r in rows) / len(rows)
    assert accuracy >= 0.9, rows


def test_resume_refuses_a_retrained_run(tmp_path, colours, classifier_run, tiny_open_clip):
    # An interrupted classify made with other weights of the same run directory.
    out = tmp_path / "preds.csv"
    cfg = load_config(ClassifyConfig, source=str(colours / "flat"), out=str(out), model=str(classifier_run))
    units = plan_units(open_source(cfg.source), cfg.unit_size)
    with Run(PartStore(out.with_name(out.name + ".parts")), out, complete=False) as output:
        output.start(cfg, _RESULT_DEFINING, resume=False, overwrite=False)
        output.check_inputs(cfg, weights_id="run:0123456789abcdef", units=units)
    with pytest.raises(PictagError, match="the weights behind the model spec changed"):
        from pictag.pipeline.classify import classify

        classify(str(colours / "flat"), str(out), model=str(classifier_run), resume=True, workers=0)


def test_zero_shot_with_a_run_and_clip_runs_need_labels(tmp_path, colours, classifier_run, tiny_open_clip, capsys):
    out = tmp_path / "zs.csv"
    args = ["classify", str(colours / "flat"), "--model", f"run:{classifier_run}", "--workers", "0"]
    assert main([*args, "--labels", "red,green,blue", "--out", str(out)]) == 0
    assert {r["label"] for r in _read(out)} <= set(COLOURS)
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    save_run_model(tmp_path / "clip-run", encoder, None, task="clip", classes=["red", "blue"], metrics={})
    assert main([*args[:3], str(tmp_path / "clip-run"), "--out", str(tmp_path / "c.csv"), "--workers", "0"]) == 0
    assert {r["label"] for r in _read(tmp_path / "c.csv")} <= {"red", "blue"}  # zero-shot over its classes
    save_run_model(tmp_path / "caption-run", encoder, None, task="clip", classes=None, metrics={})
    assert main([*args[:3], str(tmp_path / "caption-run"), "--out", str(tmp_path / "x.csv")]) == 2
    error = capsys.readouterr().err.strip()
    assert "neither a classifier head nor classes" in error and "\n" not in error


def test_embed_search_calibrate_with_a_run(tmp_path, colours, classifier_run):
    store = tmp_path / "emb"
    assert main(["embed", str(colours / "flat"), "--model", str(classifier_run), "--out", str(store),
                 "--workers", "0"]) == 0  # fmt: skip
    # search re-creates the store's model (the run) to embed the query.
    results = tmp_path / "hits.csv"
    assert main(["search", str(store), "--image", str(colours / "flat" / "red0.png"), "--top-k", "3",
                 "--out", str(results)]) == 0  # fmt: skip
    assert all(hit["key"].startswith("red") for hit in _read(results))
    truth = tmp_path / "truth.csv"
    truth.write_text("key,label\n" + "".join(f"{n}{i}.png,{n}\n" for n in COLOURS for i in range(4)))
    calibration = tmp_path / "calib.yaml"
    assert main(["calibrate", str(store), "--truth", str(truth), "--out", str(calibration)]) == 0
    out = tmp_path / "preds.csv"
    assert main(["classify", "--embeddings", str(store), "--calibration", str(calibration), "--out", str(out)]) == 0
    assert len(_read(out)) == 12


def test_trained_service_answers_with_the_runs_classes(colours, classifier_run):
    import asyncio

    from pictag.serve.config import ServeConfig
    from pictag.serve.service import create_service
    from pictag.serve.transport.base import Message, ReplyTo
    from pictag.serve.transport.memory import InProcessTransport
    from pictag.serve.worker import Worker

    service = create_service(ServeConfig(service="trained", model=str(classifier_run), device="cpu", top_k=2))
    service.setup()
    transport = InProcessTransport()
    worker = Worker(service, transport, batch_size=4, max_wait_ms=0)
    green = (colours / "flat" / "green1.png").read_bytes()

    async def scenario():
        await transport.submit(
            [Message(ReplyTo(request_id="a"), green, {}), Message(ReplyTo(request_id="b"), green, {"labels": ["x"]})]
        )
        assert worker.step() == 2
        return [await transport.wait(i, 5) for i in "ab"]

    good, refused = asyncio.run(scenario())
    assert good["status"] == 200 and good["result"]["labels"][0]["label"] == "green"
    assert len(good["result"]["labels"]) == 2 and good["result"]["model"] == f"run:{classifier_run.resolve()}"
    assert refused["status"] == 400 and "send no labels" in refused["error"]
