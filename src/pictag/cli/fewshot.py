"""`pictag fewshot`: label the query images of few-shot tasks from a handful of labelled support images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.fewshot.options import FewshotConfig

EXAMPLES = """task layout:
  TEST_DIR/<set>/<task>/support/<class>/*.jpg   labelled examples; class names are the folder names
  TEST_DIR/<set>/<task>/query/*.jpg             images to label

examples:
  pictag fewshot tasks/ --out result.csv --model timm:tf_efficientnet_lite0 --checkpoint efficientnet-lite0.pth
  pictag fewshot tasks/ --out result.csv --method tip-adapter --model open_clip:ViT-B-32/openai
  pictag fewshot tasks/ --out result.parquet --method linear-probe --model timm:tf_efficientnet_lite0 --checkpoint ckpt/best.pth
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "fewshot",
        "pictag.fewshot.options:FewshotConfig",
        "pictag.cli.fewshot:run",
        help="label query images of few-shot tasks from their support images",
        description="Fit a few-shot head on each task's support images and label its query images. OUT gets "
        "task,image,label,score rows; OUT's .tasks.csv the method used and the support accuracy of each task "
        "(leave-one-out, or cross-validated for the linear probe); .errors.csv the unreadable images.",
        examples=EXAMPLES,
    )


def run(cfg: FewshotConfig):
    from pictag.config import options_of
    from pictag.fewshot.run import fewshot

    return fewshot(**options_of(cfg))
