"""Engines end to end: each engine's export of each backend's towers equals torch in fp32, classify on an engine
writes the labels torch writes, the cache is reused across runs, and int8 reports its agreement.

Skipped, with the reason, when an engine's extra is not installed (CI installs them).
"""

from __future__ import annotations

import csv
import sys

import pytest
import torch
import torch.nn.functional as F

from pictag.cli.main import main
from pictag.config import cache_dir
from pictag.data.decode import decode_image
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models import create_model
from pictag.models.engines import EngineEncoder, compile_encoder

LABELS = "cat,astronaut,coffee,rocket,camera"
# Prompts of different token lengths, one past the 32 tokens of open_clip's first text graph.
TEXTS = ["a cat", "a photo of an astronaut", "a cup of coffee on a saucer " * 4, "a rocket " * 20]


def _engine(name: str):
    module = {"onnx": "onnxruntime", "openvino": "openvino"}[name]
    pytest.importorskip(module, reason=f"--engine {name} needs pip install 'pictag[{name}]', which is not installed")


ENGINES = [pytest.param("onnx", id="onnx"), pytest.param("openvino", id="openvino")]


@pytest.fixture(autouse=True)
def _shared_engine_cache(tmp_path_factory, monkeypatch):
    # One cache for this module's tests: each export is paid once (the reuse test checks reuse explicitly).
    monkeypatch.setenv("PICTAG_CACHE", str(_CACHE.setdefault("dir", tmp_path_factory.mktemp("engine-cache"))))


_CACHE: dict = {}


@pytest.fixture(scope="module")
def pixels(photo_dir):
    def of(preprocess):
        images = [decode_image(p.read_bytes(), preprocess.min_decode_size) for p in sorted(photo_dir.glob("*.jpg"))]
        return torch.stack([preprocess(image) for image in images])

    return of


def _models(tiny_open_clip, tiny_hf_clip) -> dict:
    spec, checkpoint = tiny_open_clip
    return {
        "open_clip": dict(spec=spec, checkpoint=checkpoint),
        "hf": dict(spec=f"hf:{tiny_hf_clip}"),
        "timm": dict(spec="timm:test_efficientnet", random_weights=True),
    }


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("backend", ["open_clip", "hf", "timm"])
def test_fp32_engine_equals_torch(engine, backend, tiny_open_clip, tiny_hf_clip, pixels):
    _engine(engine)
    options = _models(tiny_open_clip, tiny_hf_clip)[backend]
    torch_encoder = create_model(options.pop("spec"), device="cpu", precision="fp32", **options)
    compiled = compile_encoder(torch_encoder, engine)
    assert isinstance(compiled, EngineEncoder) and compiled.compiled.precision == "fp32"
    x = pixels(torch_encoder.preprocess)
    ours, theirs = compiled.encode_image(x), torch_encoder.encode_image(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert F.cosine_similarity(ours, theirs).min() >= 0.9999
    # Dynamic batch: one image, then an odd batch, through the same graph.
    torch.testing.assert_close(compiled.encode_image(x[:1]), theirs[:1], atol=1e-4, rtol=0)
    assert compiled.weights_id == torch_encoder.weights_id and compiled.preprocess == torch_encoder.preprocess
    if not torch_encoder.has_text:
        assert not compiled.has_text
        return
    torch.testing.assert_close(compiled.encode_text(TEXTS), torch_encoder.encode_text(TEXTS), atol=1e-4, rtol=0)
    labels = LABELS.split(",")
    head_ours = ZeroShotClassifier(compiled, labels, use_cache=False)
    head_theirs = ZeroShotClassifier(torch_encoder, labels, use_cache=False)
    assert torch.equal(head_ours.scores(ours).argmax(1), head_theirs.scores(theirs).argmax(1))


def _classify(photo_dir, out, *options) -> list[dict]:
    code = main(
        ["classify", str(photo_dir), "--labels", LABELS, "--workers", "0", "--out", str(out), "--overwrite", *options]
    )
    assert code == 0
    with open(out) as f:
        return list(csv.DictReader(f))


def test_classify_on_an_engine_writes_the_labels_torch_writes_and_reuses_its_export(photo_dir, tiny_hf_clip, tmp_path):
    model = ["--model", f"hf:{tiny_hf_clip}", "--device", "cpu"]
    exact = _classify(photo_dir, tmp_path / "torch.csv", *model)
    for engine in ("onnx", "openvino"):
        _engine(engine)
        first = _classify(photo_dir, tmp_path / "first.csv", *model, "--engine", engine)
        exported = {p: p.stat().st_mtime_ns for p in (cache_dir() / "engines" / engine).glob("*/*")}
        again = _classify(photo_dir, tmp_path / "again.csv", *model, "--engine", engine)
        assert exported == {p: p.stat().st_mtime_ns for p in (cache_dir() / "engines" / engine).glob("*/*")}
        assert [r["label"] for r in first] == [r["label"] for r in exact] == [r["label"] for r in again]
        for ours, theirs in zip(first, exact):
            assert abs(float(ours["score"]) - float(theirs["score"])) < 1e-4


def test_int8_reports_its_agreement_and_strict_refuses_below_the_minimum(photo_dir, tiny_hf_clip, tmp_path, capsys):
    _engine("onnx")
    options = ["--model", f"hf:{tiny_hf_clip}", "--device", "cpu", "--engine", "onnx", "--quantize", "int8"]
    options += ["--calibration-images", "3"]
    rows = _classify(photo_dir, tmp_path / "int8.csv", *options)
    assert len(rows) == 5
    err = capsys.readouterr().err
    assert "int8 (onnx): top-1 agreement with fp32" in err and "over 5 labels on 2 held-out images" in err
    # Nothing can be at least 100.1% in agreement: --strict refuses in one line, the min-agreement is named.
    code = main(
        ["classify", str(photo_dir), "--labels", LABELS, "--workers", "0", "--out", str(tmp_path / "strict.csv")]
        + [*options, "--min-agreement", "1", "--strict"]
    )
    err = capsys.readouterr().err
    if code == 2:  # agreement below 100%
        assert err.strip().splitlines()[-1].startswith("pictag classify: error: int8 top-1 agreement")
    else:
        assert code == 0 and "top-1 agreement with fp32 100.0%" in err


def test_auto_measures_once_then_reuses_its_choice(photo_dir, tiny_hf_clip, tmp_path, capsys):
    _engine("onnx")
    model = ["--model", f"hf:{tiny_hf_clip}", "--device", "cpu", "--engine", "auto"]
    _classify(photo_dir, tmp_path / "a.csv", *model)
    first = capsys.readouterr().err
    assert "--engine auto:" in first and "the fastest here" in first and "img/s" in first
    _classify(photo_dir, tmp_path / "b.csv", *model)
    assert "measured earlier on this machine" in capsys.readouterr().err


def test_bf16_is_refused_by_onnx_runtime_with_the_way_out(tiny_hf_clip):
    _engine("onnx")
    from pictag.errors import PictagError

    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="bf16")
    with pytest.raises(PictagError, match="ONNX Runtime has no bf16 kernels.*--engine openvino"):
        compile_encoder(encoder, "onnx")


def test_a_serving_worker_runs_on_the_engine_its_config_names(photo_dir, tiny_hf_clip):
    _engine("onnx")
    from pictag.serve.config import ServeConfig
    from pictag.serve.zero_shot import ZeroShotService

    services = {}
    for engine in ("torch", "onnx"):
        services[engine] = ZeroShotService(ServeConfig(model=f"hf:{tiny_hf_clip}", device="cpu", engine=engine))
        services[engine].setup()
    assert isinstance(services["onnx"].encoder, EngineEncoder)
    image = (photo_dir / "chelsea.jpg").read_bytes()
    params = {"labels": LABELS.split(",")}
    ours, theirs = (s.encode(s.predict([s.decode(image, params)])[0]) for s in services.values())
    assert [r["label"] for r in ours["labels"]] == [r["label"] for r in theirs["labels"]]
    for mine, reference in zip(ours["labels"], theirs["labels"]):
        assert abs(mine["score"] - reference["score"]) < 1e-4


def test_bench_engines_prints_speed_agreement_and_export_times(photo_dir, tiny_hf_clip, capsys):
    _engine("onnx")
    code = main(
        ["bench-engines", str(photo_dir), "--model", f"hf:{tiny_hf_clip}", "--device", "cpu", "--labels", LABELS]
        + ["--engines", "torch,onnx", "--precision", "fp32", "--limit", "5", "--calibration-images", "2"]
        + ["--rounds", "1"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "agreement with torch fp32 on 3 held-out images (5 labels)" in out[0]
    assert out[1].split() == [
        "engine",
        "precision",
        "img/s",
        "vs",
        "torch",
        "top-1",
        "min",
        "cosine",
        "export",
        "cache",
        "hit",
    ]
    rows = {tuple(line.split()[:2]): line.split() for line in out[2:4]}
    assert rows["torch", "fp32"][3:5] == ["1.00x", "100.0%"] and rows["onnx", "fp32"][4] == "100.0%"
    assert rows["onnx", "fp32"][-1].endswith("s")  # the cache-hit time


def test_embed_on_an_engine_stores_the_vectors_torch_stores(photo_dir, tiny_hf_clip, tmp_path):
    _engine("onnx")
    from pictag.store.store import EmbeddingStore

    stores = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        args = ["embed", str(photo_dir), "--model", f"hf:{tiny_hf_clip}", "--device", "cpu", "--workers", "0"]
        assert main([*args, "--engine", engine, "--dtype", "float32", "--out", str(out)]) == 0
        stores[engine] = EmbeddingStore(out)
    keys = list(stores["torch"].keys())
    _, ours = stores["onnx"].get(keys)
    _, theirs = stores["torch"].get(keys)
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), atol=1e-4, rtol=0)


def test_openvino_without_the_onnx_extra_traces_the_module_itself(monkeypatch, pixels, tmp_path):
    _engine("openvino")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if pictag[onnx] were not installed
    monkeypatch.setenv("PICTAG_CACHE", str(tmp_path))  # a cache of its own: the shared one has this entry via ONNX
    torch_encoder = create_model("timm:test_efficientnet", random_weights=True, device="cpu", precision="fp32")
    compiled = compile_encoder(torch_encoder, "openvino")
    assert not compiled.compiled.hits["image"]
    x = pixels(torch_encoder.preprocess)
    torch.testing.assert_close(compiled.encode_image(x), torch_encoder.encode_image(x), atol=1e-4, rtol=0)
