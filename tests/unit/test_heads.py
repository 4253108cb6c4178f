"""Heads on generated embeddings: one module contract for every head; every few-shot method learns, reports a support
accuracy, and refuses bad input."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.heads import Head, check_head, create_head, list_heads, load_head, scores_from_logits
from pictag.heads.auto import AutoHead

METHODS = ["prototype", "tip-adapter", "linear-probe", "auto"]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


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


class TextEncoder:
    """What a zero-shot head needs of an encoder: text embeddings (a fixed random vector per text), a logit scale and
    SigLIP's bias, or none."""

    spec = weights_id = "test-text"
    embed_dim = 32
    device = torch.device("cpu")

    def __init__(self, logit_bias: float | None = None):
        self.logit_scale, self.logit_bias = 10.0, logit_bias

    def encode_text(self, texts):
        vectors = [
            torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts
        ]
        return F.normalize(torch.stack(vectors), dim=-1)


class ClassifierEncoder:
    """What the pretrained head needs of an encoder: the classifier its weights came with."""

    spec = "test-classifier"
    device = torch.device("cpu")

    def __init__(self, weight: torch.Tensor):
        self.pretrained_classifier = (10.0 * weight, torch.zeros(len(weight)))


def every_head(name: str, logit_bias: float | None = None) -> Head:
    """Head `name` ready to predict 4 classes of 32-d features: fitted, trained heads from prototypes, zero-shot."""
    centres, (xs, ys), _ = clusters(shots=3)
    if name == "zero-shot":
        return create_head(name, encoder=TextEncoder(logit_bias), labels=["a", "b", "c", "d"], templates=["{}"])
    if name == "pretrained":
        return create_head(name, encoder=ClassifierEncoder(centres))
    if name == "fusion":  # 16-d image and 16-d text embeddings; eval: no dropout between two calls
        return create_head(name, num_classes=4, image_dim=16, text_dim=16).eval()
    if name in list_heads("trained"):
        return create_head(name, prototypes=centres)
    return create_head(name).fit(xs, ys, text_prototypes=centres)


def test_registry_lists_every_head_by_kind():
    assert sorted(list_heads("few-shot")) == sorted(METHODS)
    trained = ["arcface", "cosine", "finetuned", "fusion", "linear", "mlp", "pretrained"]
    assert sorted(list_heads("trained")) == trained
    assert list_heads("gallery") == ["knn"]
    assert sorted(list_heads()) == sorted(["zero-shot", *METHODS, *trained, "knn"])
    with pytest.raises(PictagError, match="unknown head 'nearest'.*prototype"):
        create_head("nearest")
    check_head("auto", "few-shot")
    with pytest.raises(PictagError, match="unknown few-shot head 'linear': use one of .*linear-probe"):
        check_head("linear", "few-shot")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_heads())
def test_every_head_is_a_module_from_features_to_logits_on_their_device(name, device):
    head = every_head(name).to(device)
    assert isinstance(head, torch.nn.Module)
    logits = head(torch.randn(5, 32, device=device))
    assert logits.shape == (5, 4) and logits.device.type == device and logits.dtype == torch.float32
    assert (head.num_classes, head.dim) == (4, 32)


@pytest.mark.parametrize("name", list_heads())
def test_a_head_is_rebuilt_from_its_config_and_state_dict(name):
    head = every_head(name)
    config = json.loads(json.dumps(head.config()))  # as a run directory stores it
    options = {"encoder": TextEncoder()} if name == "zero-shot" else {}
    # Shifted prototypes show that the rebuilt head holds the loaded state, not prototypes computed (or cached) anew.
    state = {k: v + 0.01 if k.endswith("prototypes") else v for k, v in head.state_dict().items()}
    head.load_state_dict(state)
    again = load_head(config, state, **options).eval()  # as run_head gives it: dropout off
    x = F.normalize(torch.randn(6, 32), dim=-1)
    assert type(again) is type(head)
    torch.testing.assert_close(again(x), head(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["zero-shot", "finetuned", "linear", "pretrained"])
def test_fit_only_measures_a_head_that_does_not_learn_from_a_support_set(name):
    head = every_head(name)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    _, (xs, ys), _ = clusters(shots=2, classes=3)  # fewer classes than the head knows
    head.fit(xs, ys)
    assert head.num_classes == 4 and all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    assert head.support_accuracy == pytest.approx((head(xs).argmax(-1) == ys).float().mean().item())


def test_scores_rule_softmax_or_sigmoid_with_bias_and_temperature():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    torch.testing.assert_close(scores_from_logits(logits), logits.softmax(-1))
    torch.testing.assert_close(scores_from_logits(logits, temperature=2.0), (logits / 2).softmax(-1))
    torch.testing.assert_close(scores_from_logits(logits, 2.0, bias=-1.5), torch.sigmoid(logits / 2 - 1.5))
    zero_shot = every_head("zero-shot")
    x = F.normalize(torch.randn(3, 32), dim=-1)
    torch.testing.assert_close(zero_shot.scores(x).sum(-1), torch.ones(3))
    siglip = every_head("zero-shot", logit_bias=-5.0)
    torch.testing.assert_close(siglip.scores(x, 0.5), torch.sigmoid(siglip(x) / 0.5 - 5.0))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("name", "logit_bias"), [(n, None) for n in list_heads()] + [("zero-shot", -5.0)])
def test_top_k_equals_the_top_k_of_the_scores(name, logit_bias, temperature):
    head = every_head(name, logit_bias)
    x = F.normalize(torch.randn(50, 32), dim=-1)
    scores, indices = head.top_k(x, 3, temperature)
    expected = head.scores(x, temperature).topk(3)
    torch.testing.assert_close(scores, expected.values)
    assert torch.equal(indices, expected.indices)
    assert head.top_k(x, 10)[1].shape == (50, 4)  # k is capped at the classes


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
    acc = lambda m: (create_head(m).fit(xs, ys)(xq).argmax(-1) == yq).float().mean().item()  # noqa: E731
    assert acc("linear-probe") >= acc("prototype")
    probe = create_head("linear-probe").fit(xs, ys)
    from pictag.heads.linear_probe import C_GRID

    assert probe.C in C_GRID


@pytest.mark.parametrize(("classes", "shots"), [(2, 4), (4, 1), (4, 6)])
def test_linear_probe_as_tensors_equals_scikit_learn(classes, shots):
    from threadpoolctl import threadpool_limits

    from pictag.heads.linear_probe import _logistic, span_basis

    _, (xs, ys), (xq, yq) = clusters(shots=shots, classes=classes)
    head = create_head("linear-probe").fit(xs, ys)
    basis = span_basis(xs)
    with threadpool_limits(1):
        model = _logistic(head.C).fit((xs @ basis.T).numpy(), ys.numpy())
    z = (xq @ basis.T).numpy()
    torch.testing.assert_close(head.scores(xq), torch.from_numpy(model.predict_proba(z)).float(), atol=1e-5, rtol=0)
    expected = torch.from_numpy(model.decision_function(z)).float()
    if classes == 2:  # scikit-learn's one column becomes two, ± half of it
        expected = torch.stack([-expected / 2, expected / 2], dim=1)
    torch.testing.assert_close(head(xq), expected, atol=1e-5, rtol=0)
    assert (head(xq).argmax(-1) == yq).float().mean() > 0.9


def test_auto_picks_the_candidate_with_the_best_support_accuracy():
    _, (xs, ys), _ = clusters(shots=5, noise=2.0, offset=2.0, seed=7)
    head = create_head("auto").fit(xs, ys)
    best = max(h.support_accuracy for h in head.candidates.values())
    assert head.chosen.support_accuracy == best == head.support_accuracy
    again = AutoHead.from_fitted(head.candidates)
    assert again.chosen_name == head.chosen_name
    assert list(head.state_dict()) == [f"chosen.{k}" for k in head.chosen.state_dict()]  # only the chosen one


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
