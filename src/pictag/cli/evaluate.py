"""`pictag evaluate`: Recall@K, MAP@R and per-class recall of an embedding, from splits or labelled sources."""

from __future__ import annotations

from pictag.cli.common import add_command
from pictag.options import EvaluateConfig

EXAMPLES = """examples:
  pictag evaluate runs/arc --splits splits.csv --query test --gallery train,val --recall-at 1,5
  pictag evaluate runs/arc --splits splits.csv --query test                 # leave-one-out within test
  pictag evaluate timm:tf_efficientnet_lite0 --query data/test/ --gallery data/train/ --out eval/
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "evaluate",
        EvaluateConfig,
        "pictag.eval.evaluate:run",
        help="Recall@K and MAP@R of an embedding: queries against a labelled gallery",
        description="Embed the query and gallery images with MODEL, search each query's nearest gallery images "
        "(exact Faiss inner product on normalised embeddings, in chunks: memory stays flat on large galleries), "
        "and write OUT/report.json (recall@K per K, map@r, queries, gallery), per_class.csv and plots.",
        examples=EXAMPLES,
    )
