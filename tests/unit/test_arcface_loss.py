"""ArcFace, CosFace and sub-center ArcFace against pytorch-metric-learning's losses (golden), the fp32 guarantee
under autocast, the embedding encoder and the head's round trip through its config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pictag.heads.base import create_head, load_head
from pictag.train.losses import MarginLoss


def _inputs(n=12, classes=5, dim=16, subcenters=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    centres = torch.randn(classes * subcenters, dim, generator=g)
    return embeddings, labels, centres


@pytest.mark.parametrize(
    "kind, subcenters, s, m",
    [("arcface", 1, 64.0, 0.5), ("arcface", 1, 48.0, 0.3), ("cosface", 1, 30.0, 0.35), ("arcface", 3, 64.0, 0.5)],
)
def test_loss_and_gradients_equal_pytorch_metric_learning(kind, subcenters, s, m):
    from pytorch_metric_learning import losses

    embeddings, labels, centres = _inputs(subcenters=subcenters)
    if kind == "cosface":
        reference = losses.CosFaceLoss(num_classes=5, embedding_size=16, margin=m, scale=s)
    elif subcenters > 1:  # its margin is in degrees
        reference = losses.SubCenterArcFaceLoss(
            num_classes=5, embedding_size=16, margin=math.degrees(m), scale=s, sub_centers=subcenters
        )
    else:
        reference = losses.ArcFaceLoss(num_classes=5, embedding_size=16, margin=math.degrees(m), scale=s)
    with torch.no_grad():  # its W is (D, C·k), class j's sub-centres in columns j·k .. j·k + k - 1
        reference.W.copy_(centres.T)
    head = create_head("arcface", num_classes=5, dim=16, scale=s, subcenters=subcenters)
    with torch.no_grad():
        head.weight.copy_(centres)
    ours_in = embeddings.clone().requires_grad_()
    theirs_in = embeddings.clone().requires_grad_()
    ours = MarginLoss(kind, scale=s, margin=m)(head.cosines(ours_in), labels)
    theirs = reference(theirs_in, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, reference.W.grad.T, rtol=1e-4, atol=1e-6)


def test_zero_margin_is_the_normalised_softmax_and_the_head_scores_plain_cosines():
    embeddings, labels, centres = _inputs()
    cosines = F.normalize(embeddings, dim=-1) @ F.normalize(centres, dim=-1).T
    loss = MarginLoss("arcface", scale=10.0, margin=0.0)(cosines, labels)
    torch.testing.assert_close(loss, F.cross_entropy(10.0 * cosines.float(), labels))
    head = create_head("arcface", prototypes=centres.float(), scale=10.0)
    torch.testing.assert_close(head(embeddings.float()), 10.0 * cosines.float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_loss_stays_fp32_and_finite_under_half_autocast(dtype):
    embeddings, labels, centres = _inputs(n=64, classes=3)
    head = create_head("arcface", prototypes=centres.float(), scale=64.0)
    with torch.autocast("cpu", dtype=dtype):
        # Half cosines of exactly 1 for every target (an embedding on its centre): sin θ = 0, s · cos = 64.
        near_one = head.cosines(head.weight[labels].detach().float()).to(dtype)
        loss = MarginLoss("arcface", 64.0, 0.5)(near_one, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(head.weight.grad).all()


def test_head_round_trips_through_its_config():
    head = create_head("arcface", prototypes=torch.randn(4, 8), scale=48.0, subcenters=2)
    again = load_head(head.config(), head.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(again(x), head(x))
    assert again.config() == {"name": "arcface", "num_classes": 4, "dim": 8, "scale": 48.0, "subcenters": 2}


def test_embedding_encoder_projects_and_normalises():
    from pictag.models.embedding import EmbeddingEncoder
    from pictag.models.registry import create_model

    backbone = create_model("timm:test_efficientnet_gn", random_weights=True, device="cpu")
    encoder = EmbeddingEncoder(backbone, dim=6)
    names = [name for name, _ in encoder.named_parameters()]
    assert len(names) == len(set(names)) and sum(n.startswith("neck.") for n in names) == 4
    assert len(names) == len(list(backbone.parameters())) + 4, "the backbone's parameters are listed once"
    pixels = torch.randn(2, 3, *backbone.preprocess.size)
    out = encoder.encode_image(pixels)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out, F.normalize(encoder.neck(backbone.encode_image(pixels, normalize=False)), dim=-1))


def test_the_task_switches_the_margin_on_after_the_frozen_epochs():
    from pictag.models.embedding import EmbeddingEncoder
    from pictag.models.registry import create_model
    from pictag.train.tasks.arcface import ArcFaceTask

    encoder = EmbeddingEncoder(create_model("timm:test_efficientnet_gn", random_weights=True, device="cpu"), dim=8)
    task = ArcFaceTask(encoder, create_head("arcface", num_classes=3, dim=8), MarginLoss("arcface", 16.0, 0.3), "abc")
    margins = []
    for epoch, frozen in ((0, True), (1, True), (2, False), (3, False)):
        task.set_epoch(epoch, frozen)
        margins.append(task.loss.margin)
    assert margins == [0.0, 0.0, 0.3, 0.3]
    assert {name: len(ps) for name, ps in task.param_groups().items()} == {
        "backbone": len(list(encoder.module.parameters())),
        "head": 5,
    }
