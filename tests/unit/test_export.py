"""`pictag export`: transformers and open_clip load what it writes, and compute the embeddings our encoder does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pictag.cli.main import main
from pictag.errors import PictagError
from pictag.models import create_model
from pictag.models.export import export_run, hf_to_open_clip, open_clip_to_hf
from pictag.models.run_dir import load_run, save_run_model

PROMPTS = ["a photo of a red square", "a dog", "an astronaut riding a horse on the moon"]


def _perturb(encoder) -> None:
    torch.manual_seed(5)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)).min().item()


@pytest.fixture(scope="module")
def open_clip_run(tmp_path_factory, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    _perturb(encoder)
    run = tmp_path_factory.mktemp("runs") / "clip-ft"
    save_run_model(run / "best", encoder, None, task="clip", classes=None, metrics={})
    return run


def _pixels(encoder) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 3, *encoder.preprocess.size)


def test_hf_export_of_an_open_clip_run_equals_it_in_transformers(tmp_path, open_clip_run):
    from transformers import CLIPModel, CLIPProcessor

    out = tmp_path / "fine_tuned_clip"
    assert main(["export", "--model", str(open_clip_run), "--format", "hf", "--out", str(out)]) == 0
    ours = load_run(open_clip_run, device="cpu", precision="fp32").encoder
    model = CLIPModel.from_pretrained(out).eval()
    processor = CLIPProcessor.from_pretrained(out)
    pixels = _pixels(ours)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**processor(text=PROMPTS, padding=True, return_tensors="pt"))
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    assert _cosine(image, ours.encode_image(pixels)) >= 0.9999
    assert _cosine(text, ours.encode_text(PROMPTS)) >= 0.9999
    assert model.logit_scale.exp().item() == pytest.approx(ours.logit_scale, rel=1e-5)
    # pictag reads it back as any save_pretrained folder.
    again = create_model(f"hf:{out}", device="cpu", precision="fp32")
    assert _cosine(again.encode_text(PROMPTS), ours.encode_text(PROMPTS)) >= 0.9999


def test_open_clip_export_loads_in_open_clip(tmp_path, open_clip_run):
    import open_clip

    out = tmp_path / "oc"
    result = export_run(open_clip_run, "open_clip", out)
    assert "local-dir" in result.summary()
    ours = load_run(open_clip_run, device="cpu", precision="fp32").encoder
    pixels = _pixels(ours)
    for name, pretrained in (
        ("local-dir:" + str(out), None),
        ("pictag-tiny", str(out / "open_clip_model.safetensors")),
    ):
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        with torch.no_grad():
            assert _cosine(model.eval().encode_image(pixels), ours.encode_image(pixels)) >= 0.9999
    with pytest.raises(PictagError, match="already exists"):
        export_run(open_clip_run, "open_clip", out)


def test_hf_run_exports_both_ways(tmp_path, tiny_hf_clip):
    import open_clip

    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="fp32")
    _perturb(encoder)
    save_run_model(tmp_path / "run", encoder, None, task="clip", classes=None, metrics={})
    export_run(tmp_path / "run", "hf", tmp_path / "hf")
    export_run(tmp_path / "run", "open_clip", tmp_path / "oc")
    pixels = _pixels(encoder)
    again = create_model(f"hf:{tmp_path / 'hf'}", device="cpu", precision="fp32")
    assert _cosine(again.encode_image(pixels), encoder.encode_image(pixels)) >= 0.9999
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    with torch.no_grad():
        assert _cosine(model.eval().encode_image(pixels), encoder.encode_image(pixels)) >= 0.9999
        assert _cosine(model.encode_text(tokenizer(PROMPTS)), encoder.encode_text(PROMPTS)) >= 0.9999


def test_layouts_are_inverse(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    state = torch.load(checkpoint, weights_only=True)
    back = hf_to_open_clip(open_clip_to_hf(state, 1, 1), 1, 1)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_impossible_exports_are_one_line_errors(tmp_path, capsys):
    encoder = create_model("timm:test_vit", random_weights=True, device="cpu")
    save_run_model(tmp_path / "timm-run", encoder, None, task="classifier", classes=None, metrics={})
    assert (
        main(["export", "--model", str(tmp_path / "timm-run"), "--format", "open_clip", "--out", str(tmp_path / "x")])
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert "has no open_clip form" in error and "\n" not in error and not (tmp_path / "x").exists()
    assert main(["export", "--model", str(tmp_path / "nope"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
