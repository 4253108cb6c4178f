from __future__ import annotations

import pytest
import torch

from conftest import TINY_OPEN_CLIP
from pictag.errors import PictagError
from pictag.heads import create_head
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models import create_model
from pictag.prompts import load_templates, parse_labels
from pictag.testing import save_random_open_clip


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


def test_zero_shot_is_the_registered_head_of_its_name(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    head = create_head("zero-shot", encoder=encoder, labels=["cat", "dog"], templates="imagenet80")
    assert isinstance(head, ZeroShotClassifier) and head.kind == "zero-shot"
    assert head.templates == load_templates("imagenet80") and list(head.state_dict()) == ["prototypes"]
    features = encoder.encode_image(torch.zeros(3, 3, 224, 224))
    torch.testing.assert_close(head(features), encoder.logit_scale * features @ head.prototypes.T)


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


@pytest.mark.parametrize(("text_cfg", "trims"), [({}, True), ({"no_causal_mask": True, "pool_type": "last"}, False)])
def test_open_clip_text_cut_after_end_of_text_equals_full_context(tmp_path, text_cfg, trims):
    config = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], **text_cfg}}
    name = f"pictag-tiny-text-{int(trims)}"
    encoder = create_model(f"open_clip:{name}", checkpoint=save_random_open_clip(tmp_path, name, config), device="cpu")
    assert encoder.trims_context is trims
    texts = ["x", "a photo of a dog", "a blurry photo of a very long and detailed label, seen from far away"]
    with torch.inference_mode():
        full_context = torch.nn.functional.normalize(encoder.module.encode_text(encoder.tokenizer(texts)), dim=-1)
    torch.testing.assert_close(encoder.encode_text(texts), full_context, atol=1e-6, rtol=0)
