"""The engines' cheap parts: the export cache (reuse, corrupt entries, concurrent writers), agreement measures, the
one-line error for an engine that is not installed, and the options' checks."""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pictag.cli.main import main
from pictag.errors import PictagError
from pictag.models.engines.agreement import Agreement, measure_agreement
from pictag.models.engines.cache import cached, entry_folder
from pictag.models.engines.choose import check_agreement, split_held_out
from pictag.pipeline.options import ClassifyConfig

KEY = {"spec": "test", "weights_id": "random:0", "engine": "fake"}


def _build_slowly(log: Path, seconds: float = 0.05):
    def build(folder: Path) -> None:
        with open(log, "a") as f:  # one line per build, whichever process ran it
            f.write("built\n")
        time.sleep(seconds)  # an export takes time; concurrent writers wait long enough to arrive during it
        (folder / "model.bin").write_bytes(b"weights" * 1000)

    return build


def _load(folder: Path) -> bytes:
    data = (folder / "model.bin").read_bytes()
    if not data.startswith(b"weights"):
        raise ValueError("not a model file")
    return data


def test_an_entry_is_built_once_then_reused(tmp_path):
    log = tmp_path / "builds.log"
    first = cached("fake", KEY, _build_slowly(log), _load)
    again = cached("fake", KEY, _build_slowly(log), _load)
    assert (first.hit, again.hit) == (False, True)
    assert again.value == first.value and again.folder == first.folder
    assert again.build_s >= 0.05  # the export time is remembered for reports
    assert log.read_text().count("built") == 1
    other = cached("fake", {**KEY, "weights_id": "random:1"}, _build_slowly(log), _load)
    assert other.folder != first.folder and not other.hit


@pytest.mark.parametrize("damage", ["truncate", "garbage", "meta"])
def test_a_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    log = tmp_path / "builds.log"
    folder = cached("fake", KEY, _build_slowly(log), _load).folder
    model = folder / "model.bin"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "garbage":
        model.write_bytes(b"x" * model.stat().st_size)  # same size: only loading finds it out
    else:
        (folder / "meta.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="pictag.models.engines.cache"):
        again = cached("fake", KEY, _build_slowly(log), _load)
    assert "corrupt" in caplog.text and "rebuilding" in caplog.text
    assert not again.hit and again.value.startswith(b"weights")
    assert log.read_text().count("built") == 2


def _writer(cache: str, log: str, queue) -> None:
    import os

    os.environ["PICTAG_CACHE"] = cache
    entry = cached("fake", KEY, _build_slowly(Path(log), seconds=0.5), _load)
    queue.put((entry.hit, len(entry.value)))


def test_concurrent_writers_build_once_and_both_load(tmp_path, monkeypatch):
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    writers = [context.Process(target=_writer, args=(str(cache), str(log), queue)) for _ in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    results = sorted(queue.get(timeout=5) for _ in writers)
    assert results == [(False, 7000), (True, 7000), (True, 7000)]
    assert log.read_text().count("built") == 1
    monkeypatch.setenv("PICTAG_CACHE", str(cache))
    siblings = [p.name for p in entry_folder("fake", KEY).parent.iterdir()]
    assert not [name for name in siblings if name.endswith((".tmp", ".corrupt"))]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def failing(folder: Path) -> None:
        (folder / "half").write_bytes(b"x")
        raise RuntimeError("exporter failed")

    with pytest.raises(RuntimeError):
        cached("fake", KEY, failing, _load)
    parent = entry_folder("fake", KEY).parent
    assert [p.name for p in parent.iterdir()] == [entry_folder("fake", KEY).name + ".lock"]


def test_agreement_over_labels_and_over_neighbours():
    torch.manual_seed(0)
    exact = F.normalize(torch.randn(40, 16), dim=-1)

    class Head(torch.nn.Module):
        logit_bias = None

        def scores(self, features):
            return (50 * features @ exact[:5].T).softmax(dim=-1)

    same = measure_agreement(exact, exact.clone(), Head())
    assert (same.top1, same.mean_abs_delta, same.over) == (1.0, 0.0, "5 labels")
    assert same.min_cosine == pytest.approx(1.0)
    noisy = measure_agreement(exact, F.normalize(exact + 0.5 * torch.randn(40, 16), dim=-1), Head())
    assert noisy.top1 < 1.0 and noisy.mean_abs_delta > 0 and noisy.min_cosine < 0.99
    neighbours = measure_agreement(exact, exact.clone())
    assert (neighbours.top1, neighbours.over) == (1.0, "nearest neighbours")
    assert "top-1 agreement with fp32 100.0% over nearest neighbours on 40 held-out images" in neighbours.summary()


def test_below_min_agreement_warns_and_strict_refuses(capsys):
    low = Agreement(images=100, top1=0.95, mean_abs_delta=0.01, min_cosine=0.98, over="10 labels")
    check_agreement(low, "openvino", 0.99, strict=False)
    err = capsys.readouterr().err
    assert "top-1 agreement with fp32 95.0% over 10 labels on 100 held-out images" in err
    assert "warning: int8 top-1 agreement 95.0% is below --min-agreement 99%" in err
    with pytest.raises(PictagError, match="below --min-agreement 99%.*--calibration-images"):
        check_agreement(low, "openvino", 0.99, strict=True)
    check_agreement(low, "openvino", 0.9, strict=True)


def test_calibration_and_held_out_images_never_overlap_when_there_are_enough():
    pixels = torch.arange(10.0).view(10, 1)
    calibration, held, apart = split_held_out(pixels, 6)
    assert (len(calibration), held.flatten().tolist(), apart) == (6, [6.0, 7.0, 8.0, 9.0], True)
    calibration, held, apart = split_held_out(pixels, 300)  # fewer images than asked: a third is held out
    assert (len(calibration), len(held), apart) == (7, 3, True)
    calibration, held, apart = split_held_out(pixels[:2], 300)
    assert (len(calibration), len(held), apart) == (2, 2, False)


@pytest.mark.parametrize(
    ("engine", "module", "extra"), [("onnx", "onnxruntime", "onnx"), ("openvino", "openvino", "openvino")]
)
def test_a_missing_engine_is_one_line_naming_its_extra(monkeypatch, capsys, tmp_path, photo_dir, engine, module, extra):
    # An entry of None in sys.modules makes `import module` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    code = main(
        ["classify", str(photo_dir), "--labels", "cat,dog", "--model", "timm:test_efficientnet", "--random-weights"]
        + ["--engine", engine, "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "r.csv")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        f"pictag classify: error: --engine {engine} needs {module}, which is not installed: "
        f"pip install 'pictag[{extra}]'"
    )
    assert not any("Traceback" in line for line in err)


def test_engine_options_are_checked_and_result_defining():
    with pytest.raises(PictagError, match="--min-agreement is a fraction"):
        ClassifyConfig(source="x", out="o.csv", min_agreement=99)
    with pytest.raises(PictagError, match="--calibration-images must be at least 1"):
        ClassifyConfig(source="x", out="o.csv", calibration_images=0)
    from pictag.pipeline.classify import _RESULT_DEFINING as CLASSIFY
    from pictag.store.embed import _RESULT_DEFINING as EMBED

    for guarded in (CLASSIFY, EMBED):
        assert {"engine", "quantize", "calibration_images"} <= set(guarded)


def test_a_resume_on_another_engine_is_refused(tmp_path, photo_dir):
    from pictag.pipeline.classify import classify

    (tmp_path / "run.csv.parts").mkdir()
    (tmp_path / "run.csv.parts" / "run.yaml").write_text(json.dumps({"engine": "openvino", "labels": "cat,dog"}))
    with pytest.raises(PictagError, match="cannot resume .*engine changed"):
        classify(str(photo_dir), str(tmp_path / "run.csv"), "cat,dog", engine="onnx", resume=True)


def test_an_engine_without_the_auto_precision_runs_fp32_but_an_explicit_one_is_kept():
    from types import SimpleNamespace

    from pictag.models.engines.encoder import engine_precision

    bf16 = SimpleNamespace(autocast_dtype=torch.bfloat16)
    precision, note = engine_precision(bf16, "onnx", None)
    assert precision == "fp32" and "--engine onnx runs fp32: it has no bf16 kernels" in note
    assert engine_precision(bf16, "onnx", "auto")[0] == "fp32"
    assert engine_precision(bf16, "onnx", "bf16") == ("bf16", None)  # compile_encoder then refuses, naming openvino
    assert engine_precision(bf16, "openvino", None) == ("bf16", None)


def test_text_prototypes_are_cached_apart_per_text_precision(tiny_hf_clip):
    from pictag.heads.zero_shot import ZeroShotClassifier
    from pictag.models import create_model

    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="bf16")
    bf16 = ZeroShotClassifier(encoder, ["cat", "dog"]).prototypes
    encoder.autocast_dtype = torch.float32
    fp32 = ZeroShotClassifier(encoder, ["cat", "dog"]).prototypes
    # An exact fp32 run never reads back prototypes a bf16 run computed.
    torch.testing.assert_close(fp32, ZeroShotClassifier(encoder, ["cat", "dog"], use_cache=False).prototypes)
    assert not torch.equal(fp32, bf16)
