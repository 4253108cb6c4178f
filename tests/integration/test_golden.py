"""With the same weights, pictag's zero-shot scores equal the reference implementations' to 1e-4."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from pictag.data.decode import decode_image
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models import create_model
from pictag.prompts import load_templates

LABELS = ["cat", "astronaut", "cup of coffee", "rocket", "camera man"]


def _pictag_scores(encoder, photo_dir, templates) -> dict[str, torch.Tensor]:
    head = ZeroShotClassifier(encoder, LABELS, templates)
    out = {}
    for path in sorted(photo_dir.glob("*.jpg")):
        image = decode_image(path.read_bytes(), encoder.preprocess.min_decode_size)
        out[path.stem] = head.scores(encoder.encode_image(encoder.preprocess(image).unsqueeze(0)))[0]
    return out


@pytest.mark.parametrize("templates", ["simple", "imagenet80"])
def test_open_clip_build_zero_shot_classifier(tiny_open_clip, photo_dir, templates):
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    spec, checkpoint = tiny_open_clip
    model, _, reference_preprocess = open_clip.create_model_and_transforms("pictag-tiny", pretrained=str(checkpoint))
    model.eval()
    weights = build_zero_shot_classifier(
        model, open_clip.get_tokenizer("pictag-tiny"), LABELS, load_templates(templates)
    )
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    ours = _pictag_scores(encoder, photo_dir, templates)
    for path in sorted(photo_dir.glob("*.jpg")):
        with torch.no_grad():
            features = model.encode_image(reference_preprocess(Image.open(path)).unsqueeze(0), normalize=True)
            expected = (model.logit_scale.exp() * features @ weights).softmax(dim=-1)[0]
        torch.testing.assert_close(ours[path.stem], expected, atol=1e-4, rtol=0)
    assert max(s.max().item() for s in ours.values()) > 0.5, "scores are too flat for the comparison to mean much"


def test_transformers_zero_shot_pipeline(tiny_hf_clip, photo_dir):
    from transformers import pipeline

    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="fp32")
    ours = _pictag_scores(encoder, photo_dir, ["a photo of a {}."])
    classifier = pipeline("zero-shot-image-classification", model=str(tiny_hf_clip), device="cpu")
    for path in sorted(photo_dir.glob("*.jpg")):
        results = classifier(Image.open(path), candidate_labels=LABELS, hypothesis_template="a photo of a {}.")
        expected = torch.tensor([next(r["score"] for r in results if r["label"] == label) for label in LABELS])
        torch.testing.assert_close(ours[path.stem], expected, atol=1e-4, rtol=0)


def test_preprocess_equals_open_clip_transform(tiny_open_clip, photo_dir):
    import open_clip

    spec, checkpoint = tiny_open_clip
    _, _, reference = open_clip.create_model_and_transforms("pictag-tiny", pretrained=str(checkpoint))
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    for path in sorted(photo_dir.glob("*.jpg")):
        ours = encoder.preprocess(decode_image(path.read_bytes(), encoder.preprocess.min_decode_size))
        torch.testing.assert_close(ours, reference(Image.open(path)), atol=1e-5, rtol=0)


def test_preprocess_equals_transformers_image_processor(tiny_hf_clip, photo_dir):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_hf_clip)
    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="fp32")
    for path in sorted(photo_dir.glob("*.jpg")):
        ours = encoder.preprocess(decode_image(path.read_bytes(), encoder.preprocess.min_decode_size))
        expected = processor(images=Image.open(path), return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_timm_features_equal_timm(photo_dir):
    import timm

    encoder = create_model("timm:resnet18", random_weights=True, device="cpu", precision="fp32")
    reference = timm.data.create_transform(**timm.data.resolve_data_config({}, model=encoder.module))
    for path in sorted(photo_dir.glob("*.jpg")):
        ours = encoder.preprocess(decode_image(path.read_bytes(), encoder.preprocess.min_decode_size))
        torch.testing.assert_close(ours, reference(Image.open(path).convert("RGB")), atol=1e-5, rtol=0)
