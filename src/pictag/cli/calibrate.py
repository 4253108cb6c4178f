"""`pictag calibrate`: fit a temperature and per-class thresholds so low-confidence predictions become `unknown`."""

from __future__ import annotations

import argparse

from pictag.cli.common import add_store_model_args, options

EXAMPLES = """examples:
  pictag calibrate emb/ --labels-file labels.txt --truth labelled.csv --out calib.yaml
  pictag calibrate emb/ --labels "cat,dog" --truth labelled.csv --target-precision 0.95 --out calib.yaml
then:
  pictag classify --embeddings emb/ --labels-file labels.txt --calibration calib.yaml --out results.parquet
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature and per-class thresholds on a small labelled set",
        description="Fit, on the store images listed in a CSV (key,label), the temperature minimising the "
        "negative log-likelihood, and per class the lowest score threshold whose predictions reach the target "
        "precision. Writes OUT (YAML, for classify --calibration), OUT's .coverage.csv table and .coverage.png curve.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("embeddings", help="embedding store folder, from `pictag embed`")
    p.add_argument("--truth", help="CSV with columns key,label: the labelled images")
    p.add_argument("--out", help="calibration file, .yaml")
    p.add_argument("--labels", help='comma-separated labels, e.g. "cat,dog,car"')
    p.add_argument("--labels-file", help="file with one label per line")
    p.add_argument("--templates", help="prompt templates: simple, imagenet80, or a file (use the same for classify)")
    p.add_argument("--target-precision", type=float, help="precision each class threshold must reach (default 0.9)")
    add_store_model_args(p)
    p.add_argument("--config", help="YAML file of options; command-line flags override it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.config import load_config
    from pictag.store.calibrate import CalibrateConfig
    from pictag.store.calibrate import run as calibrate

    result = calibrate(load_config(CalibrateConfig, args.config, **options(args)))
    print(result.summary())
    return 0
