"""Encoders are trainable nn.Modules: grad-enabled forward_image/forward_text under the inference wrappers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.models import create_model
from pictag.train.blocks import image_blocks

TEXTS = ["a photo of a cat", "dog"]


@pytest.fixture(params=["open_clip", "hf", "timm"])
def encoder(request, tiny_open_clip, tiny_hf_clip):
    if request.param == "open_clip":
        spec, checkpoint = tiny_open_clip
        return create_model(spec, checkpoint=checkpoint, device="cpu")
    if request.param == "hf":
        return create_model(f"hf:{tiny_hf_clip}", device="cpu")
    return create_model("timm:test_efficientnet", random_weights=True, device="cpu")


def _pixels(encoder, n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 3, *encoder.preprocess.size)


def test_is_an_eval_module_over_the_librarys_model(encoder):
    assert isinstance(encoder, torch.nn.Module) and not encoder.training
    assert [id(p) for p in encoder.parameters()] == [id(p) for p in encoder.module.parameters()]
    assert encoder.train().module.training and not encoder.eval().module.training
    assert encoder.device == torch.device("cpu") and encoder.autocast_dtype == torch.float32


def test_forward_image_reaches_the_first_image_block(encoder):
    encoder.forward_image(_pixels(encoder)).square().sum().backward()
    blocks, _ = image_blocks(encoder.module)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[0].parameters())


def test_encode_image_is_normalised_forward_image(encoder):
    pixels = _pixels(encoder)
    with torch.no_grad():
        expected = F.normalize(encoder.forward_image(pixels), dim=-1)
    torch.testing.assert_close(encoder.encode_image(pixels), expected, atol=1e-6, rtol=0)


def test_forward_text_reaches_the_text_tower_only(encoder):
    if not encoder.has_text:
        with pytest.raises(PictagError, match="image-only"):
            encoder.forward_text(TEXTS)
        return
    encoder.forward_text(TEXTS).square().sum().backward()
    reached = {n for n, p in encoder.module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("text_projection") for n in reached) and any("token_embedding" in n for n in reached)
    assert not [n for n in reached if n.startswith(("visual", "vision"))]
    with torch.no_grad():
        expected = F.normalize(encoder.forward_text(TEXTS), dim=-1)
    torch.testing.assert_close(encoder.encode_text(TEXTS), expected, atol=1e-6, rtol=0)


def test_a_training_step_changes_the_weights_and_they_load_back(tmp_path):
    encoder = create_model("timm:test_efficientnet", random_weights=True, device="cpu").train()
    before = [p.detach().clone() for p in encoder.parameters()]
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    encoder.forward_image(_pixels(encoder, 4)).square().mean().backward()
    optimizer.step()
    assert not all(torch.equal(b, p) for b, p in zip(before, encoder.eval().parameters()))
    # The module's own state dict (keys prefixed "module.") is a checkpoint create_model reads.
    torch.save(encoder.state_dict(), tmp_path / "step.pth")
    again = create_model("timm:test_efficientnet", checkpoint=tmp_path / "step.pth", device="cpu")
    pixels = _pixels(encoder)
    torch.testing.assert_close(again.encode_image(pixels), encoder.encode_image(pixels), atol=0, rtol=0)
