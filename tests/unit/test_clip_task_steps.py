"""The clip task's pieces on a tiny transformers CLIP: groups cover every parameter once, texts and targets for
label prompts and captions, and one step sends gradients into both towers and the temperature."""

from __future__ import annotations

import torch

from pictag.models import create_model
from pictag.train.tasks.clip import ClipTask, _targets


def test_groups_texts_targets_and_a_step(tiny_hf_clip):
    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="fp32")
    task = ClipTask(encoder, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    groups = task.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(encoder.parameters()))
    assert [p is encoder.module.logit_scale for p in groups["logit_scale"]] == [True]
    assert groups["image"] and groups["text"]

    batch = {
        "images": torch.randint(0, 255, (4, *encoder.preprocess.size, 3), dtype=torch.uint8),
        "labels": torch.tensor([0, 1, 0, 1]),
        "texts": [None, None, None, "a dog asleep on a sofa"],
        "index": torch.tensor([0, 1, 2, 3]),
    }
    assert task.texts(batch) == ["a photo of a cat.", "a dog.", "a photo of a cat.", "a dog asleep on a sofa"]
    # Images 0 and 2 share their class prompt; the caption describes image 3 alone.
    expected = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]])
    assert torch.equal(_targets(batch), expected)

    task.train()
    loss, logs = task(batch)
    loss.backward()
    assert torch.isfinite(loss) and logs["logit_scale"] > 1
    for name in ("image", "text", "logit_scale"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name]), name
    out = task(batch, stage="val")
    assert out["logits"].shape == (4, 2)
    encoder_out, head = task.inference_model()
    assert head is None and encoder_out is encoder
