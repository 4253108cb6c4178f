from __future__ import annotations

import pytest
import torch

from pictag.errors import PictagError
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models import create_model
from pictag.prompts import load_templates, parse_labels


def test_templates_builtin_file_and_validation(tmp_path):
    assert load_templates("simple") == ["a photo of a {}."]
    assert len(load_templates("imagenet80")) == 80
    path = tmp_path / "t.txt"
    path.write_text("# comment\nan image of {}\n\na drawing of a {}\n")
    assert load_templates(str(path)) == ["an image of {}", "a drawing of a {}"]
    path.write_text("no placeholder\n")
    with pytest.raises(PictagError, match="exactly one"):
        load_templates(str(path))


def test_labels_parsing(tmp_path):
    assert parse_labels("cat, dog ,car") == ["cat", "dog", "car"]
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\ndog  # pets\n")
    assert parse_labels(labels_file=path) == ["cat", "dog"]
    for bad, message in [("", "empty"), ("a,a", "more than once"), ("unknown,b", "reserved")]:
        with pytest.raises(PictagError, match=message):
            parse_labels(bad)


def test_prototypes_are_computed_once_then_read_from_disk(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    first = ZeroShotClassifier(encoder, ["cat", "dog"], "imagenet80").prototypes
    calls = []
    original = encoder.encode_text
    encoder.encode_text = lambda texts, **kw: calls.append(texts) or original(texts, **kw)
    again = ZeroShotClassifier(encoder, ["cat", "dog"], "imagenet80").prototypes
    assert calls == [] and torch.equal(first, again)
    ZeroShotClassifier(encoder, ["cat", "bird"], "imagenet80")
    assert len(calls) == 1 and len(calls[0]) == 160  # one batched call for every prompt
    assert torch.allclose(first.norm(dim=-1), torch.ones(2))


def test_image_only_model_refuses_zero_shot():
    encoder = create_model("timm:resnet18", random_weights=True, device="cpu")
    with pytest.raises(PictagError, match="image-only"):
        ZeroShotClassifier(encoder, ["cat"])


def test_encode_text_batches_by_length_and_keeps_the_callers_order(tiny_hf_clip):
    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu")
    texts = ["a photo of a very long and detailed label", "cat", "a photo of a dog", "x", "a bird"]
    together = encoder.encode_text(texts, batch_size=2)
    one_by_one = torch.cat([encoder.encode_text([text]) for text in texts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)
