"""The `clip` task: contrastive fine-tuning of both CLIP towers (FLYP), so the result still classifies zero-shot.

FLYP ("Finetune Like You Pretrain", Goyal et al. 2023) fine-tunes with the pretraining loss itself: each image is
paired with a text, the prompt of its label through the templates (or its caption from a table's text column), and
the symmetric contrastive loss over the batch pulls each pair together and pushes the other texts away, at CLIP's
learned temperature. Two images of one class share their class's prompt as a positive, rather than each pushing
the other's prompt away: the targets of a row are spread over every text of the same class (captions are unique,
so with captions this is CLIP's loss exactly).

Validation is what the run is for: zero-shot top-1 over the class prompts, with the text prototypes recomputed
from the current text tower. `RUN/best/` holds the whole CLIP encoder and no head; `--wise-ft A` also writes
`RUN/wise-ft-A/`, the WiSE-FT weights (1 - A) · original + A · fine-tuned (Wortsman et al. 2022), a run
directory of its own.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.models.base import Encoder
from pictag.prompts import load_templates
from pictag.train.task import Task

# Parameters of the image tower, by the name prefixes of open_clip's CLIP and transformers' CLIPModel.
_IMAGE = ("visual.", "vision_model.", "visual_projection.")
_SCALE = ("logit_scale", "logit_bias")
# CLIP's own cap on the learned temperature: ln(100).
_MAX_SCALE = 100.0


class ClipTask(Task):
    """Both towers of a CLIP encoder and its logit scale, trained with the contrastive loss on (image, text) pairs.

    Parameter groups: "image", "text" and "logit_scale" (trained alone during `--freeze-epochs`).

    Args:
        encoder: A CLIP-family encoder with a text tower and a learned logit scale.
        class_names: The classes; their prompts are the texts of images without a caption, and the validation
            prototypes.
        templates: Prompt templates (names, file or list; see `load_templates`).
        wise_ft: Also write the WiSE-FT interpolation with this weight on the fine-tuned model, or None.
    """

    name = "clip"
    head_groups = ("logit_scale",)

    def __init__(
        self,
        encoder: Encoder,
        class_names: list[str],
        templates: str | list[str] = "simple",
        wise_ft: float | None = None,
    ):
        super().__init__()
        if not encoder.has_text:
            raise PictagError(
                f"the clip task trains both towers of a CLIP model; {encoder.spec} is image-only: use --task classifier"
            )
        if encoder.logit_bias is not None:
            raise PictagError(
                f"{encoder.spec} is a SigLIP-style model (sigmoid scores); the clip task trains softmax CLIP models"
            )
        if not isinstance(getattr(encoder.module, "logit_scale", None), torch.nn.Parameter):
            raise PictagError(f"{encoder.spec} has no learned logit scale for the clip task to train")
        if wise_ft is not None and not 0.0 <= wise_ft <= 1.0:
            raise PictagError(f"--wise-ft must be in [0, 1] (the weight of the fine-tuned model), not {wise_ft}")
        self.encoder = encoder
        self.class_names = list(class_names)
        self.templates = load_templates(templates)
        self.wise_ft = wise_ft
        # The weights training starts from, for WiSE-FT: kept outside the module (never in a checkpoint) and taken
        # before a resume or --init-from loads anything, so they are always the zero-shot model's.
        self.original = (
            {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()} if wise_ft else None
        )
        self._prototypes: torch.Tensor | None = None

    @classmethod
    def build(cls, encoder, data, cfg) -> ClipTask:
        return cls(encoder, data.classes, getattr(cfg, "templates", "simple"), getattr(cfg, "wise_ft", None))

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        groups: dict[str, list[torch.nn.Parameter]] = {"image": [], "text": [], "logit_scale": []}
        for name, p in self.encoder.module.named_parameters():
            group = "logit_scale" if name in _SCALE else "image" if name.startswith(_IMAGE) else "text"
            groups[group].append(p)
        return groups

    def logit_scale(self) -> torch.Tensor:
        return self.encoder.module.logit_scale.exp().clamp(max=_MAX_SCALE)

    def texts(self, batch: dict) -> list[str]:
        """Each image's text: its caption, or a prompt of its label (templates taken in turn, by image)."""
        out = []
        for text, label, index in zip(batch["texts"], batch["labels"].tolist(), batch["index"].tolist()):
            out.append(text if text else self.templates[index % len(self.templates)].format(self.class_names[label]))
        return out

    def training_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        self._prototypes = None  # the text tower moves: validation recomputes them
        pixels = self.encoder.preprocess.normalize(batch["images"])
        images = F.normalize(self.encoder.forward_image(pixels).float(), dim=-1)
        texts = F.normalize(self.encoder.forward_text(self.texts(batch)).float(), dim=-1)
        scale = self.logit_scale()
        logits = scale * images @ texts.T
        targets = _targets(batch)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2
        return loss, {"loss": loss.detach(), "logit_scale": scale.detach()}

    def class_prototypes(self) -> torch.Tensor:
        """(C, D) zero-shot prototypes of the classes from the current text tower, as `ZeroShotClassifier` makes them."""
        if self._prototypes is None:
            prompts = [t.format(c) for c in self.class_names for t in self.templates]
            chunks = [self.encoder.forward_text(prompts[i : i + 256]).float() for i in range(0, len(prompts), 256)]
            embedded = F.normalize(torch.cat(chunks), dim=-1).view(len(self.class_names), len(self.templates), -1)
            self._prototypes = F.normalize(embedded.mean(dim=1), dim=-1)
        return self._prototypes

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        pixels = self.encoder.preprocess.normalize(batch["images"])
        images = F.normalize(self.encoder.forward_image(pixels).float(), dim=-1)
        return {"logits": self.logit_scale() * images @ self.class_prototypes().T, "labels": batch["labels"]}

    def inference_model(self) -> tuple[Encoder, None]:
        from pictag.models.run_dir import refresh_logit_scale

        refresh_logit_scale(self.encoder)  # zero-shot heads read the learned temperature from the encoder
        return self.encoder, None

    def classes(self) -> list[str]:
        return self.class_names

    def after_fit(self, out: Path) -> None:
        """Write `out/wise-ft-A/` from `out/best/` and the original weights, when `--wise-ft A` was given."""
        if self.wise_ft is None or not (Path(out) / "best").is_dir():
            return
        write_wise_ft(Path(out) / "best", self.original, self.wise_ft, Path(out) / f"wise-ft-{self.wise_ft:g}")


def _targets(batch: dict) -> torch.Tensor:
    """(N, N) target distributions: row i spread over the texts that describe image i.

    A caption describes its own image only; a class prompt describes every image of that class.
    """
    labels = batch["labels"]
    captioned = torch.tensor([bool(t) for t in batch["texts"]], device=labels.device)
    same = (labels[:, None] == labels[None, :]) & ~captioned[:, None] & ~captioned[None, :]
    positive = same | torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return positive.float() / positive.sum(dim=1, keepdim=True)


def interpolate(original: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor], alpha: float) -> dict:
    """WiSE-FT: (1 - alpha) · original + alpha · fine-tuned for every float tensor (others from the fine-tuned)."""
    if original.keys() != fine_tuned.keys():
        raise PictagError("the original and fine-tuned weights have different tensors: not the same architecture")
    out = {}
    for key, tuned in fine_tuned.items():
        if tuned.is_floating_point():
            start = original[key].to(tuned.device, tuned.dtype)
            out[key] = torch.lerp(start, tuned, alpha) if 0 < alpha < 1 else (tuned if alpha == 1 else start).clone()
        else:
            out[key] = tuned
    return out


def write_wise_ft(best: Path, original: dict[str, torch.Tensor], alpha: float, out: Path) -> Path:
    """A run directory at `out` holding the WiSE-FT interpolation of the run model `best` with `original`."""
    from pictag.models.run_dir import load_run, refresh_logit_scale, save_run_model

    run = load_run(best, device="cpu", precision="fp32")
    encoder = run.encoder
    encoder.load_state_dict(interpolate(original, encoder.state_dict(), alpha))
    refresh_logit_scale(encoder)
    metrics = {"wise_ft": alpha, "fine_tuned": run.meta.get("metrics", {})}
    return save_run_model(out, encoder, None, task="clip", classes=run.classes, metrics=metrics)
