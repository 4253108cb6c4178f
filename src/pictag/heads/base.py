"""One kind of head: an `nn.Module` from L2-normalised features (N, D) to class logits (N, C), made by `create_head`.

(One exception: the `pretrained` head applies a backbone's own classifier, which was trained on the raw pooled
features; it says so with `normalized_input = False`, and the pipeline then passes it unnormalised features.)

Heads come in four kinds. `zero-shot` builds its weights from the text of the labels. Few-shot heads (`prototype`,
`tip-adapter`, `linear-probe`, `auto`) `fit` a labelled support set of embeddings, and report `support_accuracy`,
their held-out accuracy estimated on the support set alone (leave-one-out, or cross-validation for the linear probe),
which is what `auto` compares and what a user gets as the measured accuracy of a task. Trained heads (`finetuned`,
`linear`) are learned by an optimiser with the backbone. A gallery head (`knn`) keeps a labelled gallery of
embeddings and votes by nearest neighbours. A CLIP encoder may pass the text prototypes of the class
names to `fit`, which heads that can use them blend in.

Logits become scores in one place, `scores_from_logits`; every head's `scores` and `top_k` go through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch

from pictag.errors import PictagError
from pictag.registry import Registry

ZERO_SHOT, FEW_SHOT, TRAINED, GALLERY = "zero-shot", "few-shot", "trained", "gallery"


def scores_from_logits(logits: torch.Tensor, temperature: float = 1.0, bias: float | None = None) -> torch.Tensor:
    """Scores of (N, C) logits: a softmax over the classes, or with a `bias` (SigLIP) a sigmoid per class.

    `temperature` divides the logits first (calibration); the bias is added after, as the weights were trained.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if bias is not None:
        return torch.sigmoid(logits + bias)
    return logits.softmax(dim=-1)


class Head(torch.nn.Module):
    """A classifier over embeddings: `forward` maps (N, dim) features to (N, num_classes) logits.

    A head computes on the device it was moved to (`.to(device)`), like any module. It is rebuilt from its
    `config()` and `state_dict()` by `load_head`.

    Attributes:
        name: The registry name.
        kind: "zero-shot", "few-shot" (learns from a support set with `fit`), "trained" (by an optimiser) or
            "gallery" (keeps the set it is fitted on, and votes).
        logit_bias: SigLIP's bias: when set, scores are a sigmoid per class instead of a softmax.
        normalized_input: Whether `forward` takes L2-normalised features (every head but `pretrained`).
        num_classes: Classes; 0 until a few-shot head is fitted.
        dim: Length of the features.
        support_accuracy: Held-out accuracy estimated on the support set (measured on it, for heads that do not
            learn from it), or None before `fit` or when the support set is too small to hold anything out.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    logit_bias: float | None = None
    normalized_input: ClassVar[bool] = True

    def __init__(self, num_classes: int = 0, dim: int = 0):
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.support_accuracy: float | None = None
        # Checked before every forward, so an unfitted head fails with the fix rather than a shape mismatch.
        self.register_forward_pre_hook(_require_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) logits of (N, dim) features."""
        raise NotImplementedError

    def scores(self, features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(N, num_classes) class scores (softmax, or sigmoid for SigLIP-style weights); see `scores_from_logits`."""
        return scores_from_logits(self(features), temperature, self.logit_bias)

    @torch.no_grad()  # inference only: it works in place on the logits
    def top_k(self, features: torch.Tensor, k: int = 1, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, class indices) of the k best classes per row, best first.

        Equal to `scores(features, temperature).topk(k)`, but only the k kept scores are formed and the softmax
        denominator is summed in place in the logits, so no other (N, classes) matrix is allocated: at a million
        images this pass is bound by allocation and memory traffic. `temperature` divides the logits (calibration).
        """
        logits = self(features)  # a fresh tensor from every head, so it may be overwritten
        if temperature != 1.0:
            logits.div_(temperature)
        values, indices = logits.topk(min(k, logits.shape[-1]), dim=-1)
        if self.logit_bias is not None:  # sigmoid scores are per class: the kept logits are enough
            return scores_from_logits(values, bias=self.logit_bias), indices
        best = values[:, :1]
        denominators = logits.sub_(best).exp_().sum(dim=-1, keepdim=True)
        return (values - best).exp() / denominators, indices

    def fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None = None) -> Head:
        """Fit on support embeddings; a head of another kind learns nothing from them and only measures itself.

        The fitted head lives on the features' device.

        Args:
            features: (N, D) L2-normalised support embeddings.
            labels: (N,) class indices; every class 0..C-1 must have at least one example.
            text_prototypes: (C, D) normalised text embeddings of the class names (CLIP models only), or None.

        Returns:
            self, fitted.

        Raises:
            PictagError: empty support set, a class without examples, or prototypes that do not fit.
        """
        features, labels = features.float(), labels.long().to(features.device)
        num_classes = check_support(features, labels, text_prototypes)
        if text_prototypes is not None:
            text_prototypes = text_prototypes.float().to(features.device)
        if self.kind == FEW_SHOT:  # it takes its classes from the support set; other heads come with theirs
            self.num_classes, self.dim = num_classes, features.shape[1]
        self._fit(features, labels, text_prototypes)
        return self

    def _fit(self, features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> None:
        """Learn from the support set; this default, for heads that learn nothing from it, only measures."""
        with torch.no_grad():
            self.support_accuracy = accuracy(self(features), labels)

    def config(self) -> dict:
        """The name and JSON-able options from which `load_head` rebuilds this head, with its `state_dict()`."""
        return {"name": self.name, "num_classes": self.num_classes, "dim": self.dim}

    def extra_repr(self) -> str:
        return f"{self.name!r}, classes={self.num_classes}, dim={self.dim}"


def _require_classes(head: Head, args: tuple) -> None:
    if not head.num_classes:
        raise PictagError(f"the {head.name} head is not fitted: call fit(support_features, labels) first")


# Every head, by name, resolved on first use: this module never imports its implementations. A plug-in adds its
# own with `HEADS.register(name, "module:Class")`.
HEADS: Registry[type[Head]] = Registry(
    "head",
    {
        "arcface": "pictag.heads.arcface:ArcFaceHead",
        "auto": "pictag.heads.auto:AutoHead",
        "fusion": "pictag.heads.fusion:FusionHead",
        "knn": "pictag.heads.knn:KnnHead",
        "linear-probe": "pictag.heads.linear_probe:LinearProbeHead",
        "pretrained": "pictag.heads.pretrained:PretrainedHead",
        "prototype": "pictag.heads.prototype:PrototypeHead",
        "tip-adapter": "pictag.heads.tip_adapter:TipAdapterHead",
        "finetuned": "pictag.heads.trained:ResidualCosineHead",
        "linear": "pictag.heads.trained:LinearHead",
        "cosine": "pictag.heads.trained:CosineHead",
        "mlp": "pictag.heads.trained:MLPHead",
        "zero-shot": "pictag.heads.zero_shot:ZeroShotClassifier",
    },
)


def list_heads(kind: str | None = None) -> list[str]:
    """Names of the registered heads, or of one kind ("zero-shot", "few-shot", "trained")."""
    if kind is None:  # names only: nothing is imported
        return HEADS.names()
    return [name for name in HEADS.names() if HEADS.get(name).kind == kind]


def check_head(name: str, kind: str | None = None) -> None:
    """Refuse a name that is not a registered head (of `kind`), naming the choices.

    Raises:
        PictagError: unknown name.
    """
    names = list_heads(kind)
    if name not in names:
        raise PictagError(HEADS.unknown(name, names, f"{kind} head" if kind else None))


def create_head(name: str, **options) -> Head:
    """A new head by registry name.

    Few-shot heads ("prototype", "tip-adapter", "linear-probe", "auto") need no options and are then fitted;
    "zero-shot" takes `encoder`, `labels` and `templates`; trained heads ("finetuned", "linear") take the class
    `prototypes` they start from; "pretrained" takes the `encoder` whose own classifier it applies. The options of
    `head.config()` rebuild a head of the same shape.

    Raises:
        PictagError: unknown name; the message lists the known ones.
    """
    return HEADS.get(name)(**options)


def load_head(config: Mapping, state_dict: Mapping[str, torch.Tensor], **options) -> Head:
    """A head rebuilt from `head.config()` and `head.state_dict()`, as a run directory stores them.

    `options` adds what a dict cannot hold: the `encoder` of a zero-shot head.
    """
    head = create_head(**config, **options)
    head.load_state_dict(state_dict)
    return head


def check_support(features: torch.Tensor, labels: torch.Tensor, text_prototypes: torch.Tensor | None) -> int:
    """The number of classes of a support set, after checking that every class has an example."""
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise PictagError(f"support features {tuple(features.shape)} and labels {tuple(labels.shape)} do not pair up")
    if not len(labels):
        raise PictagError("the support set is empty: give at least one labelled image per class")
    counts = torch.bincount(labels)
    if labels.min() < 0 or (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise PictagError(f"support classes {missing} have no examples: every class needs at least one image")
    if text_prototypes is not None and tuple(text_prototypes.shape) != (len(counts), features.shape[1]):
        raise PictagError(
            f"text prototypes are {tuple(text_prototypes.shape)}, expected ({len(counts)}, {features.shape[1]})"
        )
    return len(counts)


def can_leave_one_out(labels: torch.Tensor) -> bool:
    """Whether every class keeps an example when any one is held out."""
    return bool(torch.bincount(labels).min() >= 2)


def best_scale(logits: torch.Tensor | None, labels: torch.Tensor, default: float) -> float:
    """The softmax temperature (multiplier of `logits`) with the lowest held-out negative log-likelihood.

    It changes no prediction, only how much the scores can be trusted as probabilities.
    """
    if logits is None:
        return default
    grid = [math.exp(x) for x in torch.linspace(0.0, math.log(100.0), 24).tolist()]
    nll = [torch.nn.functional.cross_entropy(s * logits, labels).item() for s in grid]
    return grid[min(range(len(grid)), key=nll.__getitem__)]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of (N, C) scores against (N,) labels."""
    return (logits.argmax(dim=-1) == labels).float().mean().item()
