"""`pictag export` keeps everything a run learned: transformers and timm load a timm classifier run, onnxruntime and
OpenVINO run any run's graph, and each gives pictag's own scores and embeddings on the same photos (<= 1e-5).

What a format cannot hold (a CLIP run's head in a CLIP folder) is refused in one line; so is a corrupt run.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pictag.cli.main import main
from pictag.errors import PictagError
from pictag.heads.base import create_head
from pictag.models import create_model
from pictag.models.embedding import EmbeddingEncoder
from pictag.models.export import export_run
from pictag.models.run_dir import load_run, save_run_model

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """A classifier trained by `pictag train` on a tiny random timm ViT: its config, metrics and head are real."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(3):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (40, 40, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    run = tmp_path_factory.mktemp("runs") / "colours-vit"
    argv = ["train", str(root), "--model", "timm:test_vit", "--random-weights", "--epochs", "1", "--workers", "0",
            "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def clip_runs(tmp_path_factory, tiny_open_clip):
    """A CLIP classifier run (linear head), an arcface run (learned embedding and class centres), a clip run."""
    spec, checkpoint = tiny_open_clip
    root = tmp_path_factory.mktemp("clip-runs")
    torch.manual_seed(0)
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    classes = sorted(COLOURS)
    head = create_head("linear", prototypes=torch.randn(3, encoder.embed_dim))
    save_run_model(root / "classifier" / "best", encoder, head, task="classifier", classes=classes, metrics={})
    embedding = EmbeddingEncoder(encoder, dim=8)
    torch.nn.init.normal_(embedding.neck[1].running_mean)  # trained statistics, not the identity
    arcface = create_head("arcface", prototypes=torch.randn(3, 8), scale=30.0)
    save_run_model(root / "arcface" / "best", embedding, arcface, task="arcface", classes=classes, metrics={})
    save_run_model(root / "clip" / "best", encoder, None, task="clip", classes=None, metrics={})
    return root


def _crops(photo_dir, preprocess) -> tuple[list[str], torch.Tensor]:
    paths = sorted(photo_dir.glob("*.jpg"))
    crops = [preprocess.crop(Image.open(p).convert("RGB")) for p in paths]
    return [p.name for p in paths], torch.from_numpy(np.stack(crops))


def _pictag_outputs(run, crops) -> dict[str, np.ndarray]:
    """What pictag computes on uint8 crops: the embedding, and the scores where the run has a head."""
    loaded = load_run(run, device="cpu", precision="fp32")
    pixels = loaded.encoder.preprocess.normalize(crops)
    out = {"embedding": loaded.encoder.encode_image(pixels).numpy()}
    if loaded.head is not None:
        with torch.no_grad():
            features = loaded.encoder.encode_image(pixels, normalize=loaded.head.normalized_input)
            out["scores"] = loaded.head.scores(features).numpy()
    return out


def test_timm_run_hf_folder_gives_pictags_scores_in_transformers(tmp_path, timm_run, photo_dir, capsys):
    import timm
    from transformers import AutoModelForImageClassification, pipeline

    out = tmp_path / "hf"
    assert main(["export", "--model", str(timm_run), "--format", "hf", "--out", str(out)]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
    assert model.config.id2label == dict(enumerate(sorted(COLOURS)))

    # pictag's own classify against transformers' pipeline, on the same real photos, every class's score.
    assert main(["classify", str(photo_dir), "--model", str(timm_run), "--top-k", "3", "--workers", "0",
                 "--out", str(tmp_path / "ours.parquet")]) == 0  # fmt: skip
    ours = {r["key"]: r for r in pq.read_table(tmp_path / "ours.parquet").to_pylist()}
    classifier = pipeline("image-classification", model=str(out), trust_remote_code=True)
    paths = sorted(photo_dir.glob("*.jpg"))
    worst = 0.0
    for path, answers in zip(paths, classifier([str(p) for p in paths], top_k=3), strict=True):
        row = ours[path.name]
        mine = {row[f"label_{i}"]: row[f"score_{i}"] for i in (1, 2, 3)}
        worst = max(worst, *(abs(mine[a["label"]] - a["score"]) for a in answers))
    assert worst <= TOLERANCE

    # timm's own format: the backbone, whose pooled features are the run's.
    names, crops = _crops(photo_dir, load_run(timm_run).encoder.preprocess)
    backbone = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True).eval()
    loaded = load_run(timm_run, device="cpu", precision="fp32")
    pixels = loaded.encoder.preprocess.normalize(crops)
    with torch.no_grad():
        assert (backbone(pixels) - loaded.encoder.encode_image(pixels, normalize=False)).abs().max() <= TOLERANCE


def test_the_folder_is_refused_without_its_code(tmp_path, timm_run):
    # Without trust_remote_code transformers refuses the folder rather than score unnormalised features.
    from transformers import AutoModelForImageClassification

    main(["export", "--model", str(timm_run), "--format", "hf", "--out", str(tmp_path / "hf")])
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForImageClassification.from_pretrained(tmp_path / "hf", trust_remote_code=False)


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_graphs_give_pictags_scores_and_embeddings(tmp_path, engine, timm_run, clip_runs, photo_dir):
    import onnxruntime
    import openvino as ov

    # OpenVINO converts the ONNX graph: one run with both outputs shows the conversion keeps them.
    runs = (timm_run, clip_runs / "arcface", clip_runs / "clip") if engine == "onnx" else (clip_runs / "arcface",)
    for run in runs:
        out = tmp_path / run.name
        assert main(["export", "--model", str(run), "--format", engine, "--out", str(out)]) == 0
        pipeline = json.loads((out / "pipeline.json").read_text())
        loaded = load_run(run)
        assert pipeline["labels"] == loaded.classes and pipeline["input"]["size"] == list(
            loaded.encoder.preprocess.size
        )
        _, crops = _crops(photo_dir, loaded.encoder.preprocess)
        expected = _pictag_outputs(run, crops)
        if engine == "onnx":
            session = onnxruntime.InferenceSession(str(out / pipeline["model"]))
            names = [o.name for o in session.get_outputs()]
            got = dict(zip(names, session.run(None, {"images": crops.numpy()}), strict=True))
        else:
            compiled = ov.Core().compile_model(str(out / pipeline["model"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            result = compiled(crops.numpy())
            got = {o.get_any_name(): result[o] for o in compiled.outputs}
        assert got.keys() == expected.keys() == pipeline["outputs"].keys()
        for name, value in expected.items():
            assert np.abs(got[name] - value).max() <= TOLERANCE, (run.name, name)


def test_every_export_has_a_model_card(tmp_path, timm_run):
    for form in ("hf", "onnx"):
        main(["export", "--model", str(timm_run), "--format", form, "--out", str(tmp_path / form)])
        card = (tmp_path / form / "README.md").read_text()
        assert "## Data" in card and str(timm_run.parent.parent) in card or "colours" in card
        assert "| train_loss |" in card and "| epoch | 1 |" in card
        assert all(f"| {i} | {c} |" in card for i, c in enumerate(sorted(COLOURS)))
        assert "- epochs: `1`" in card and "- head: `linear`" in card


def test_clip_runs_with_heads_refuse_clip_folders_in_one_line(tmp_path, clip_runs, capsys):
    for run, lost in (("classifier", "linear head"), ("arcface", "learned 16->8 embedding")):
        for form in ("hf", "open_clip"):
            target = tmp_path / f"{run}-{form}"
            assert main(["export", "--model", str(clip_runs / run), "--format", form, "--out", str(target)]) == 2
            error = capsys.readouterr().err.strip()
            assert lost in error and "--format onnx" in error and "\n" not in error and not target.exists()
    # The clip run has nothing beyond its towers: the CLIP folder holds all of it, and has a card.
    assert main(["export", "--model", str(clip_runs / "clip"), "--format", "hf", "--out", str(tmp_path / "clip")]) == 0
    assert "no classes" in (tmp_path / "clip" / "README.md").read_text()


def test_a_corrupt_run_is_one_line(tmp_path, clip_runs, capsys):
    import shutil

    for damage in ("truncate", "json", "weights"):
        run = tmp_path / damage
        shutil.copytree(clip_runs / "classifier", run)
        weights, meta = run / "best" / "model.safetensors", run / "best" / "pictag.json"
        if damage == "truncate":
            weights.write_bytes(weights.read_bytes()[:1000])
        elif damage == "json":
            meta.write_text('{"backbone": ')
        else:
            weights.unlink()
        assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("pictag export: error:") and "\n" not in error, error
        assert not (tmp_path / "x").exists()


def test_a_timm_models_own_classifier_is_transformers_own_class(tmp_path):
    # A run holding the backbone's own classifier (as `pictag download --to` writes one) needs no code of ours.
    from transformers import AutoModelForImageClassification

    from pictag.heads.pretrained import PretrainedHead

    encoder = create_model("timm:test_vit", random_weights=True, device="cpu", precision="fp32")
    head = PretrainedHead(encoder, classes=[f"c{i}" for i in range(encoder.pretrained_classifier[0].shape[0])])
    save_run_model(tmp_path / "run", encoder, head, task="download", classes=head.classes, metrics={})
    export_run(tmp_path / "run", "hf", tmp_path / "hf")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(model).__name__ == "TimmWrapperForImageClassification" and model.config.id2label[3] == "c3"
    pixels = torch.randn(2, 3, *encoder.preprocess.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = head.scores(encoder.encode_image(pixels, normalize=False))
        assert (model(pixel_values=pixels).logits.softmax(-1) - ours).abs().max() <= TOLERANCE


def test_a_head_a_timm_classifier_cannot_hold_is_refused(tmp_path, capsys):
    encoder = create_model("timm:test_vit", random_weights=True, device="cpu", precision="fp32")
    head = create_head("mlp", prototypes=torch.randn(3, encoder.embed_dim))
    save_run_model(tmp_path / "run", encoder, head, task="classifier", classes=list("abc"), metrics={})
    assert main(["export", "--model", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    error = capsys.readouterr().err.strip()
    assert "mlp head is not one linear map" in error and "--format onnx" in error and not (tmp_path / "hf").exists()
    with pytest.raises(PictagError, match="format=onnx"):  # a Python caller is told the keyword argument
        export_run(tmp_path / "run", "hf", tmp_path / "hf")
