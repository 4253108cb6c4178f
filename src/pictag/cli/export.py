"""`pictag export`: a trained run as a transformers save_pretrained folder or an open_clip checkpoint."""

from __future__ import annotations

from pictag.cli.common import add_command
from pictag.options import ExportConfig

EXAMPLES = """examples:
  pictag export runs/clip-ft --format hf --out fine_tuned_clip/      # transformers' CLIPModel.from_pretrained loads it
  pictag export runs/clip-ft/wise-ft-0.5 --format open_clip --out clip-wise/
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "export",
        ExportConfig,
        "pictag.cli.export:run",
        help="write a trained run as a transformers or open_clip model",
        description="Write a run directory's encoder in another library's format: a save_pretrained folder "
        "(config.json, model.safetensors, preprocessor_config.json, tokenizer) or an open_clip checkpoint. "
        "CLIP backbones only; open_clip and transformers layouts are converted into each other.",
        examples=EXAMPLES,
    )


def run(cfg: ExportConfig):
    from pictag.models.export import export_run

    return export_run(cfg.run, cfg.format, cfg.out, overwrite=cfg.overwrite)
