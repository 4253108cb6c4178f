"""`pictag classify`: zero-shot classification of an image collection against text labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.pipeline.options import ClassifyConfig

EXAMPLES = """examples:
  pictag classify data/zip1.tar --index data/zip1.index.parquet --labels "cat,dog,car" --out results.csv
  pictag classify photos/ --labels-file labels.txt --top-k 3 --out results.parquet
  pictag classify "shards/{000000..000009}.tar" --labels-file imagenet.txt --templates imagenet80 --resume --out out.parquet
  pictag classify --embeddings emb/ --labels-file imagenet.txt --templates imagenet80 --out results.parquet
  pictag classify --embeddings emb/ --labels-file labels.txt --calibration calib.yaml --out results.csv
  pictag classify photos/ --model timm:tf_efficientnet_lite0 --checkpoint w.pth --head pretrained --out imagenet.csv
  pictag classify photos/ --model runs/parts --top-k 3 --out preds.csv        # a trained run's own classes
  pictag classify photo.jpg --model runs/parts --top-k 3                      # printed; no file written
  pictag classify photos/ --model runs/parts --format jsonl --out - | jq .label
  pictag classify test.csv --images images/ --model runs/s2 --model runs/s2-256 --tta flip --out preds.csv
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "classify",
        "pictag.pipeline.options:ClassifyConfig",
        "pictag.cli.classify:run",
        help="classify images against text labels (zero-shot) or a trained run's classes",
        description="Classify every image of a source against text labels with a CLIP-family model. Unreadable "
        "images go to OUT's .errors.csv; the resolved config goes to OUT's .config.yaml. Without --out, the answers "
        "are printed and nothing is written.",
        examples=EXAMPLES,
    )


def run(cfg: ClassifyConfig):
    from pictag.config import options_of
    from pictag.pipeline.classify import classify

    return classify(**options_of(cfg))
