"""`pictag fewshot-eval`: mean accuracy ± 95% CI of few-shot methods over sampled N-way K-shot episodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.fewshot.options import FewshotEvalConfig

EXAMPLES = """examples:
  pictag fewshot-eval data/ --ways 5 --shots 1,5,16 --episodes 200 --method all --model timm:tf_efficientnet_lite0 --checkpoint W.pth
  pictag fewshot-eval hymenoptera_data/train hymenoptera_data/val --ways 2 --method prototype,auto --out eval/
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "fewshot-eval",
        "pictag.fewshot.options:FewshotEvalConfig",
        "pictag.cli.fewshot_eval:run",
        help="evaluate few-shot methods on episodes sampled from labelled images (DATA/<class>/*.jpg)",
        description="Embed every image once, then sample episodes (seeded: every method sees the same ones) and "
        "print the mean query accuracy with its 95% confidence interval and the seconds per task, for each "
        "method and shot count. Several DATA folders pool their classes by name. --out writes scores.csv, "
        "accuracy.png and config.yaml.",
        examples=EXAMPLES,
    )


def run(cfg: FewshotEvalConfig):
    from pictag.config import options_of
    from pictag.fewshot.evaluate import evaluate_fewshot

    return evaluate_fewshot(**options_of(cfg))
