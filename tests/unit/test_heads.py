"""Few-shot heads on generated embeddings: every method learns, reports a support accuracy, and refuses bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.heads import create_head, list_heads
from pictag.heads.auto import AutoHead

METHODS = ["prototype", "tip-adapter", "linear-probe", "auto"]


def clusters(shots: int, classes: int = 4, dim: int = 32, noise: float = 0.6, seed: int = 0, offset: float = 0.0):
    """Normalised Gaussian clusters around random class centres, optionally sharing a common offset direction."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    common = offset * F.normalize(torch.ones(dim), dim=0)

    def draw(n, s):
        gen = torch.Generator().manual_seed(s)
        labels = torch.arange(classes).repeat_interleave(n)
        x = centres[labels] + common + noise / dim**0.5 * torch.randn(len(labels), dim, generator=gen)
        return F.normalize(x, dim=-1), labels

    return centres, draw(shots, seed + 1), draw(20, seed + 2)


def test_registry_lists_every_method():
    assert set(METHODS) == set(list_heads("few-shot")) < set(list_heads())
    with pytest.raises(PictagError, match="unknown head 'knn'.*prototype"):
        create_head("knn")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_and_reports_support_accuracy(method):
    _, (xs, ys), (xq, yq) = clusters(shots=6)
    head = create_head(method).fit(xs, ys)
    probs = head.scores(xq)
    assert probs.shape == (len(xq), 4)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(len(xq)))
    assert (probs.argmax(dim=-1) == yq).float().mean() > 0.9
    assert head.support_accuracy is not None and 0.8 <= head.support_accuracy <= 1.0


@pytest.mark.parametrize("method", METHODS)
def test_one_shot_has_no_held_out_estimate_but_still_predicts(method):
    _, (xs, ys), (xq, yq) = clusters(shots=1, noise=0.3)
    head = create_head(method).fit(xs, ys)
    assert head.support_accuracy is None
    assert (head.scores(xq).argmax(dim=-1) == yq).float().mean() > 0.8


def test_prototypes_are_normalised_class_means():
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]), dim=-1)
    head = create_head("prototype").fit(x, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(head.prototypes, F.normalize(torch.stack([x[:2].mean(0), x[2:].mean(0)]), dim=-1))


def test_prototype_leave_one_out_equals_refitting_without_each_example():
    _, (xs, ys), _ = clusters(shots=3, noise=1.5)
    head = create_head("prototype").fit(xs, ys)
    correct = 0
    for i in range(len(xs)):
        keep = torch.arange(len(xs)) != i
        refit = create_head("prototype").fit(xs[keep], ys[keep])
        correct += int(refit(xs[i : i + 1]).argmax() == ys[i])
    assert head.support_accuracy == pytest.approx(correct / len(xs))


def test_tip_adapter_blends_text_prototypes_for_clip_models():
    # One noisy shot per class: the cache alone errs, zero-shot text prototypes (the true centres) fix it.
    centres, (xs, ys), (xq, yq) = clusters(shots=1, noise=3.0, seed=3)
    cache_only = create_head("tip-adapter").fit(xs, ys)
    blended = create_head("tip-adapter").fit(xs, ys, text_prototypes=centres)
    acc = lambda h: (h.scores(xq).argmax(-1) == yq).float().mean().item()  # noqa: E731
    assert acc(blended) > acc(cache_only)
    assert blended.text_prototypes is not None and cache_only.text_prototypes is None


def test_tip_adapter_picks_alpha_beta_by_leave_one_out():
    _, (xs, ys), _ = clusters(shots=5, noise=1.0)
    head = create_head("tip-adapter").fit(xs, ys)
    from pictag.heads.tip_adapter import ALPHAS_CACHE_ONLY, BETAS

    assert head.beta.item() in BETAS and head.alpha.item() in ALPHAS_CACHE_ONLY
    assert head.support_accuracy is not None


def test_linear_probe_beats_cosine_prototypes_when_all_embeddings_share_a_direction():
    # Image-only backbones give embeddings with a large common component; the probe's intercept absorbs it.
    _, (xs, ys), (xq, yq) = clusters(shots=8, noise=1.2, offset=3.0, seed=5)
    acc = lambda m: (create_head(m).fit(xs, ys).scores(xq).argmax(-1) == yq).float().mean().item()  # noqa: E731
    assert acc("linear-probe") >= acc("prototype")
    probe = create_head("linear-probe").fit(xs, ys)
    from pictag.heads.linear_probe import C_GRID

    assert probe.C in C_GRID


def test_linear_probe_two_classes():
    _, (xs, ys), (xq, yq) = clusters(shots=4, classes=2)
    probs = create_head("linear-probe").fit(xs, ys).scores(xq)
    assert probs.shape == (len(xq), 2) and (probs.argmax(-1) == yq).float().mean() > 0.9


def test_auto_picks_the_candidate_with_the_best_support_accuracy():
    _, (xs, ys), _ = clusters(shots=5, noise=2.0, offset=2.0, seed=7)
    head = create_head("auto").fit(xs, ys)
    best = max(h.support_accuracy for h in head.candidates.values())
    assert head.chosen.support_accuracy == best == head.support_accuracy
    again = AutoHead.from_fitted(head.candidates)
    assert again.chosen_name == head.chosen_name


def test_auto_falls_back_without_held_out_examples():
    centres, (xs, ys), _ = clusters(shots=1)
    assert create_head("auto").fit(xs, ys).chosen_name == "linear-probe"
    assert create_head("auto").fit(xs, ys, text_prototypes=centres).chosen_name == "tip-adapter"


@pytest.mark.parametrize("method", METHODS)
def test_bad_support_sets_are_refused(method):
    x = F.normalize(torch.randn(4, 8), dim=-1)
    with pytest.raises(PictagError, match="no examples"):
        create_head(method).fit(x, torch.tensor([0, 0, 2, 2]))
    with pytest.raises(PictagError, match="empty"):
        create_head(method).fit(x[:0], torch.tensor([], dtype=torch.long))
    with pytest.raises(PictagError, match="text prototypes"):
        create_head(method).fit(x, torch.tensor([0, 0, 1, 1]), text_prototypes=torch.zeros(3, 8))
    with pytest.raises(PictagError, match="not fitted"):
        create_head(method).scores(x)
