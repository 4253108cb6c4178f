"""`pictag models`: the model specs and weight tags pictag can build."""

from __future__ import annotations

from pictag.cli.common import add_command
from pictag.options import ModelsConfig


def add_parser(sub) -> None:
    add_command(
        sub,
        "models",
        ModelsConfig,
        "pictag.cli.models:run",
        help="list model specs and weight tags",
        description="List model specs usable with --model. open_clip specs end in /TAG (the weights); "
        "hf: takes any hub id or a local save_pretrained directory; timm: lists pretrained names.",
    )


def run(cfg: ModelsConfig) -> str:
    from pictag.models.registry import list_models

    needle = (cfg.grep or "").lower()
    return "\n".join(spec for spec in list_models(cfg.scheme) if needle in spec.lower())
