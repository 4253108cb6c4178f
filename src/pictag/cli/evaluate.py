"""`pictag evaluate`: a classifier's accuracy on labelled images (--data), or the Recall@K and MAP@R of an embedding
(--query, from splits or labelled sources)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.eval.options import EvaluateConfig

EXAMPLES = """examples:
  pictag evaluate --model runs/parts --data data/val/                                # report in runs/parts/eval/
  pictag evaluate --model open_clip:ViT-B-32/openai --labels-file labels.txt --data data/val/ --out eval/   # zero-shot
  pictag evaluate --model runs/fusion --data test.csv --images images/ --out eval/   # a product table, fusion runs
  pictag evaluate --model runs/arc --splits splits.csv --query test --gallery train,val --recall-at 1,5
  pictag evaluate --model runs/arc --splits splits.csv --query test                 # leave-one-out within test
  pictag evaluate --model timm:tf_efficientnet_lite0 --query data/test/ --gallery data/train/ --out eval/
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "evaluate",
        "pictag.eval.options:EvaluateConfig",
        "pictag.cli.evaluate:run",
        help="a classifier's accuracy on labelled images, or Recall@K and MAP@R of an embedding",
        description="With --data: classify the labelled images as `pictag classify` does (OUT/predictions.parquet; "
        "--resume finishes an interrupted run) and write OUT/report.json (top1, top5, macro_f1, "
        "balanced_accuracy, ece, images, classes), per_class.csv, confusion.png, reliability.png and errors.png "
        "(the most confident mistakes). A class the model does not know is an error. "
        "With --query: embed the query and gallery images with MODEL, search each query's nearest gallery images "
        "(exact Faiss inner product on normalised embeddings, in chunks: memory stays flat on large galleries), "
        "and write OUT/report.json (recall@K per K, map@r, queries, gallery), per_class.csv and plots; query "
        "classes absent from the gallery are an error, or counted when some are.",
        examples=EXAMPLES,
    )


def run(cfg: EvaluateConfig):
    from pictag.config import options_of
    from pictag.eval.evaluate import evaluate

    return evaluate(**options_of(cfg))
