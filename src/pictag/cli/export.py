"""`pictag export`: a trained run as a transformers folder, an open_clip checkpoint, or an ONNX/OpenVINO graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.models.options import ExportConfig

EXAMPLES = """examples:
  pictag export --model runs/clip-ft --format hf --out clip-hf/   # transformers' CLIPModel.from_pretrained loads it
  pictag export --model runs/clip-ft/wise-ft-0.5 --format open_clip --out clip-wise/
  pictag export --model runs/lite0 --format hf --out hf/   # AutoModelForImageClassification, trust_remote_code=True
  pictag export --model runs/lite0 --format onnx --out lite0-onnx/   # model.onnx: uint8 crops -> scores, embedding
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "export",
        "pictag.models.options:ExportConfig",
        "pictag.cli.export:run",
        help="write a trained run as a transformers, open_clip, ONNX or OpenVINO model, with a model card",
        description="Write everything a run learned in another library's format, with a README.md model card "
        "(data, recipe, metrics, labels): a save_pretrained folder (a CLIP run, or a timm classifier with its "
        "labels), an open_clip checkpoint (a CLIP run), or one ONNX/OpenVINO graph from uint8 crops to scores and "
        "embedding (any run but fusion). What a format cannot hold is refused, naming it.",
        examples=EXAMPLES,
    )


def run(cfg: ExportConfig):
    from pictag.models.export import export_run

    return export_run(cfg.model, cfg.format, cfg.out, overwrite=cfg.overwrite)
