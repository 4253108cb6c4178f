"""`--head pretrained`: a timm model's own classifier on its unnormalised features, golden against timm's forward."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from pictag.cli.main import main
from pictag.data.decode import decode_image
from pictag.heads import create_head, list_heads, load_head
from pictag.heads.pretrained import imagenet_classes
from pictag.models import create_model
from pictag.pipeline.classify import classify

PHOTOS = ("astronaut", "chelsea", "coffee")


def reference(name: str) -> torch.nn.Module:
    """timm's own model with the weights pictag's `random_weights` builds (seed 0, default classifier)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


def pixels(encoder, photo_dir) -> torch.Tensor:
    images = [decode_image((photo_dir / f"{name}.jpg").read_bytes()) for name in PHOTOS]
    return torch.stack([encoder.preprocess(image) for image in images])


@pytest.mark.parametrize("name", ["test_efficientnet", "test_vit"])
def test_logits_equal_timm_forward(name, photo_dir):
    encoder = create_model(f"timm:{name}", random_weights=True, device="cpu")
    head = create_head("pretrained", encoder=encoder)
    batch = pixels(encoder, photo_dir)

    with torch.no_grad():
        ours = head(encoder.encode_image(batch, normalize=False))
        theirs = reference(name)(batch)
        on_normalised = head(encoder.encode_image(batch))

    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    # The classifier needs the raw features: on normalised ones the logits (and here the ranking) differ.
    assert not torch.allclose(on_normalised, theirs, atol=1e-2)
    # The encoder itself stays the headless model: its parameters and state dict hold no classifier.
    assert encoder.embed_dim == head.dim and not any("classifier" in k or "head.fc" in k for k in encoder.state_dict())


def test_head_is_registered_and_round_trips(photo_dir):
    encoder = create_model("timm:test_efficientnet", random_weights=True, device="cpu")
    head = create_head("pretrained", encoder=encoder)
    assert "pretrained" in list_heads("trained") and not head.normalized_input
    assert head.classes == list(imagenet_classes()) and head.classes[281] == "tabby, tabby cat"
    assert head.config() == {"name": "pretrained", "num_classes": 1000, "dim": encoder.embed_dim}
    rebuilt = load_head(head.config(), head.state_dict())
    features = encoder.encode_image(pixels(encoder, photo_dir), normalize=False)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(features), head(features))
        scores, _ = head.top_k(features, 3)
        torch.testing.assert_close(scores, F.softmax(head(features), -1).topk(3).values)


def test_classify_writes_the_models_own_top1(tmp_path, photo_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS:
        (photos / f"{name}.jpg").write_bytes((photo_dir / f"{name}.jpg").read_bytes())
    result = classify(
        str(photos),
        str(tmp_path / "p.csv"),
        model="timm:test_efficientnet",
        random_weights=True,
        head="pretrained",
        top_k=2,
        workers=0,
        device="cpu",
    )
    assert result.classified == len(PHOTOS)
    encoder = create_model("timm:test_efficientnet", random_weights=True, device="cpu")
    with torch.no_grad():
        expected = reference("test_efficientnet")(pixels(encoder, photo_dir)).argmax(-1).tolist()
    with open(tmp_path / "p.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["key"])
    assert [r["label"] for r in rows] == [imagenet_classes()[i] for i in expected]
    assert all(r["label_1"] == r["label"] for r in rows)


def test_refusals_are_one_line(tmp_path, photo_dir, tiny_open_clip, capsys):
    spec, checkpoint = tiny_open_clip
    out = str(tmp_path / "p.csv")
    timm_args = ["--model", "timm:test_efficientnet", "--random-weights", "--head", "pretrained", "--out", out]
    assert main(["classify", str(photo_dir), *timm_args, "--labels", "cat,dog"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot take --labels" in err
    clip_args = ["--model", spec, "--checkpoint", str(checkpoint), "--head", "pretrained", "--out", out]
    assert main(["classify", str(photo_dir), *clip_args, "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no classifier of its own" in err

    # A features-only checkpoint loads (into the headless model) but brings no classifier to keep.
    import timm

    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), tmp_path / "features.pth")
    headless = create_model("timm:test_efficientnet", checkpoint=tmp_path / "features.pth", device="cpu")
    assert headless.pretrained_classifier is None
