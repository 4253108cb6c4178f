"""The weights' train transform and test-time views: uint8 crops of the model's size, like the eval crop."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pictag.errors import PictagError
from pictag.models.preprocess import Preprocess

CLIP = dict(resize=40, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    # Smooth gradients plus noise: every crop, flip and jitter shows in the pixels.
    y, x = np.mgrid[0:90, 0:120]
    noise = np.random.default_rng(0).integers(0, 40, (90, 120, 3))
    return Image.fromarray((np.stack([x * 2, y * 2, x + y], axis=-1) + noise).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("auto_augment", [None, "rand", "trivial"])
def test_train_transform_gives_random_crops_reproducible_under_a_seed(image, auto_augment):
    transform = Preprocess((32, 48), **CLIP).train_transform(auto_augment=auto_augment)
    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    assert first.shape == (32, 48, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, second)
    # Seeded again, and in another process (a DataLoader worker gets a pickled copy), the draws repeat.
    torch.manual_seed(0)
    again = pickle.loads(pickle.dumps(transform))
    assert np.array_equal(again(image), first) and np.array_equal(again(image), second)


def test_train_transform_options_and_decode_size():
    transform = Preprocess((32, 48), **CLIP).train_transform(scale=(0.25, 1.0))
    assert transform.min_decode_size == (96, 64)  # (width, height): a quarter of the area is half of each side
    with pytest.raises(PictagError, match="rand, trivial"):
        Preprocess((32, 32), **CLIP).train_transform(auto_augment="augmix")


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_tta_views_are_the_eval_crop_its_mirror_and_zoomed_crops(image, backend):
    preprocess = Preprocess((32, 32), **CLIP, backend=backend)
    views = pickle.loads(pickle.dumps(preprocess.tta_views(scales=(1.0, 1.5))))(image)
    eval_crop = preprocess.crop(image)
    assert len(views) == 4 and all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in views)
    assert np.array_equal(views[0], eval_crop) and np.array_equal(views[1], eval_crop[:, ::-1])
    zoomed = Preprocess((32, 32), **{**CLIP, "resize": 60}, backend=backend).crop(image)
    assert np.array_equal(views[2], zoomed) and np.array_equal(views[3], zoomed[:, ::-1])
    assert preprocess.tta_views(scales=(1.0, 1.5)).min_decode_size == (60, 60)
    assert len(preprocess.tta_views(flip=False)(image)) == 1
