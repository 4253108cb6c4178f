"""`pictag fewshot`: label the query images of few-shot tasks from a handful of labelled support images."""

from __future__ import annotations

import argparse

from pictag.cli.common import add_model_args, add_runtime_args, options

EXAMPLES = """task layout:
  TEST_DIR/<set>/<task>/support/<class>/*.jpg   labelled examples; class names are the folder names
  TEST_DIR/<set>/<task>/query/*.jpg             images to label

examples:
  pictag fewshot tasks/ result.csv --model timm:tf_efficientnet_lite0 --checkpoint efficientnet-lite0.pth
  pictag fewshot tasks/ result.csv --method tip-adapter --model open_clip:ViT-B-32/openai
  pictag fewshot tasks/ result.parquet --method linear-probe --model timm:tf_efficientnet_lite0 --checkpoint ckpt/best.pth
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fewshot",
        help="label query images of few-shot tasks from their support images",
        description="Fit a few-shot head on each task's support images and label its query images. OUT gets "
        "task,image,label,score rows; OUT's .tasks.csv the method used and the support accuracy of each task "
        "(leave-one-out, or cross-validated for the linear probe); .errors.csv the unreadable images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("test_dir", nargs="?", help="folder of tasks (or one task folder)")
    p.add_argument("out", nargs="?", help="results file, .csv or .parquet")
    p.add_argument(
        "--method",
        help="prototype, tip-adapter, linear-probe, auto (best support accuracy per task; the default), or "
        "finetuned (the head stored by fewshot-train in --checkpoint)",
    )
    p.add_argument("--templates", help="prompt templates for CLIP text prototypes (Tip-Adapter): simple, imagenet80")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace existing output")
    add_model_args(p)
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.config import load_config
    from pictag.fewshot.run import FewshotConfig
    from pictag.fewshot.run import run as fewshot

    result = fewshot(load_config(FewshotConfig, args.config, **options(args)))
    print(result.summary())
    return 0
