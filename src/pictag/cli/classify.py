"""`pictag classify`: zero-shot classification of an image collection against text labels."""

from __future__ import annotations

import argparse

from pictag.cli.common import add_model_args, add_runtime_args, add_source_args, options

EXAMPLES = """examples:
  pictag classify data/zip1.tar --index data/zip1.index.parquet --labels "cat,dog,car" --out results.csv
  pictag classify photos/ --labels-file labels.txt --top-k 3 --out results.parquet
  pictag classify "shards/{000000..000009}.tar" --labels-file imagenet.txt --templates imagenet80 --resume --out out.parquet
  pictag classify --embeddings emb/ --labels-file imagenet.txt --templates imagenet80 --out results.parquet
  pictag classify --embeddings emb/ --labels-file labels.txt --calibration calib.yaml --out results.csv
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="zero-shot classify images against text labels",
        description="Classify every image of a source against text labels with a CLIP-family model. Unreadable "
        "images go to OUT's .errors.csv; the resolved config goes to OUT's .config.yaml.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_args(p)
    p.add_argument("--out", help="results file, .csv or .parquet")
    p.add_argument("--labels", help='comma-separated labels, e.g. "cat,dog,car"')
    p.add_argument("--labels-file", help="file with one label per line")
    p.add_argument("--templates", help="prompt templates: simple, imagenet80, or a file with one {} template a line")
    p.add_argument("--top-k", type=int, help="labels and scores to write per image (default 1)")
    p.add_argument("--threshold", type=float, help="top-1 score below which the label is 'unknown'")
    p.add_argument("--embeddings", help="classify an embedding store (`pictag embed`) instead of SOURCE: no decoding")
    p.add_argument("--calibration", help="temperature and per-class thresholds from `pictag calibrate` (YAML)")
    p.add_argument("--max-pixels", type=int, help="refuse larger images as decompression bombs (default 100M)")
    p.add_argument("--resume", action="store_true", default=None, help="finish an interrupted run")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace existing output")
    p.add_argument(
        "--unit-size", type=int, help="images per unit of work (default 1000): each unit is committed as one part"
    )
    add_model_args(p)
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.config import load_config
    from pictag.pipeline.classify import ClassifyConfig
    from pictag.pipeline.classify import run as classify

    cfg = load_config(ClassifyConfig, args.config, **options(args))
    result = classify(cfg)
    print(result.summary())
    return 0
