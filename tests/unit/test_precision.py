"""bf16 inference on CPUs: the encode wrappers keep matmul's folded path (see `Encoder`'s docstring)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from pictag.models import create_model


def _weight_expanding_products(module: torch.nn.Module, run) -> int:
    """Batched products (aten::bmm) of `run()` whose batched operand is a linear weight copied over positions."""
    weights = {(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)}
    weights |= {(p.shape[1], p.shape[0]) for name, p in module.named_parameters() if name.endswith("in_proj_weight")}
    with profile(record_shapes=True) as prof:
        run()
    return sum(
        1
        for e in prof.events()
        if e.name == "aten::bmm" and len(e.input_shapes[1]) == 3 and tuple(e.input_shapes[1][1:]) in weights
    )


@pytest.fixture(scope="module")
def bf16_encoder(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    return create_model(spec, checkpoint=checkpoint, device="cpu", precision="bf16")


def test_bf16_encode_never_copies_weights_over_positions(bf16_encoder):
    # open_clip's attention hands its input projection a transposed, non-contiguous (L, N, D) tensor. Under
    # inference_mode autocast's uncached bf16 weight does not require grad, so matmul expands it over the L
    # positions into a batched product: on ViT-B/32 a 177 MB copy per layer and batch, 2.5x slower than fp32.
    pixels = torch.randn(4, 3, *bf16_encoder.preprocess.size)
    module = bf16_encoder.module
    assert _weight_expanding_products(module, lambda: bf16_encoder.encode_image(pixels)) == 0
    assert _weight_expanding_products(module, lambda: bf16_encoder.encode_text(["a cat", "a dog"])) == 0

    def old_wrapper():
        with torch.inference_mode(), bf16_encoder.autocast():
            bf16_encoder.forward_image(pixels)

    if _weight_expanding_products(module, old_wrapper) == 0:
        pytest.skip(f"torch {torch.__version__} no longer expands weights under inference_mode: nothing to guard")


def test_bf16_embeddings_are_close_to_fp32_and_plain_tensors(bf16_encoder, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    fp32 = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, *fp32.preprocess.size)
    ours = bf16_encoder.encode_image(pixels)
    assert ours.dtype == torch.float32 and not ours.is_inference(), "usable in a later autograd graph (probes)"
    assert F.cosine_similarity(ours, fp32.encode_image(pixels)).min() > 0.99


def test_a_frozen_backbone_trains_in_inferences_precision(monkeypatch):
    from pictag.device import auto_precision, training_precision

    monkeypatch.delenv("PICTAG_PRECISION", raising=False)
    cpu = torch.device("cpu")
    assert training_precision(cpu)[0] == "fp32", "its backward pass is not faster in bf16"
    assert training_precision(cpu, backward=False)[0] == auto_precision(cpu)[0], "it only embeds"
    assert training_precision(cpu, "fp32", backward=False)[0] == "fp32", "an asked precision stays"
