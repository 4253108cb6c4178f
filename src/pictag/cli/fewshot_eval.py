"""`pictag fewshot-eval`: mean accuracy ± 95% CI of few-shot methods over sampled N-way K-shot episodes."""

from __future__ import annotations

import argparse

from pictag.cli.common import add_model_args, add_runtime_args, options

EXAMPLES = """examples:
  pictag fewshot-eval data/ --ways 5 --shots 1,5,16 --episodes 200 --method all --model timm:tf_efficientnet_lite0 --checkpoint W.pth
  pictag fewshot-eval hymenoptera_data/train hymenoptera_data/val --ways 2 --method prototype,auto --out eval/
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fewshot-eval",
        help="evaluate few-shot methods on episodes sampled from DATA_DIR/<class>/*.jpg",
        description="Embed every image once, then sample episodes (seeded: every method sees the same ones) and "
        "print the mean query accuracy with its 95% confidence interval and the seconds per task, for each "
        "method and shot count. Several DATA_DIRs pool their classes by name. --out writes scores.csv, "
        "accuracy.png and config.yaml.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="*", help="folders of <class>/*.jpg")
    p.add_argument("--ways", type=int, help="classes per episode (default 5)")
    p.add_argument("--shots", help="support images per class, comma-separated (default 1,5,16)")
    p.add_argument("--episodes", type=int, help="episodes per shot count (default 200)")
    p.add_argument("--queries", type=int, help="query images per class and episode (default 15)")
    p.add_argument("--method", help="all (default), or comma-separated: prototype,tip-adapter,linear-probe,auto")
    p.add_argument("--seed", type=int, help="seed of the episode sampler (default 0)")
    p.add_argument("--templates", help="prompt templates for CLIP text prototypes (Tip-Adapter)")
    p.add_argument("--out", help="folder for scores.csv, accuracy.png and config.yaml")
    add_model_args(p)
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.config import load_config
    from pictag.fewshot.evaluate import FewshotEvalConfig, run_eval

    overrides = options(args)
    overrides["data"] = overrides["data"] or None
    print(run_eval(load_config(FewshotEvalConfig, args.config, **overrides)).summary())
    return 0
