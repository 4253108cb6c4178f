"""`pictag download`: fetch a model's weights on a connected machine, for machines without the hub."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.models.options import DownloadConfig

EXAMPLES = """examples:
  pictag download --model open_clip:ViT-B-32/openai                 # into the Hugging Face cache ($HF_HOME)
  pictag download --model timm:tf_efficientnet_lite0.in1k --to lite0/   # a folder: --model lite0/ loads it offline
  pictag models --cached                                            # what the cache holds, with sizes
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "download",
        "pictag.models.options:DownloadConfig",
        "pictag.cli.download:run",
        help="fetch a model's weights for offline use",
        description="Fetch what --model SPEC needs (open_clip tags, hf ids, timm names) into the Hugging Face "
        "cache, or with --to into a self-contained folder that --model DIR loads with no hub and no cache.",
        examples=EXAMPLES,
    )


def run(cfg: DownloadConfig):
    from pictag.models.download import download

    return download(cfg.model, cfg.to, overwrite=cfg.overwrite)
