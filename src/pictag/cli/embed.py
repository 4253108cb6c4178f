"""`pictag embed`: embed an image collection once into an embedding store (Parquet shards + manifest)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.store.options import EmbedConfig

EXAMPLES = """examples:
  pictag embed data/zip1.tar --index data/index.parquet --model open_clip:ViT-B-32/openai --out emb/
  pictag embed photos/ --out emb/ --dtype float32
  pictag embed "shards/{000000..000009}.tar" --out emb/ --resume     # finish an interrupted run
  pictag embed "s3://bucket/shards/{000000..000999}.tar" --out s3://bucket/emb   # a store on object storage
then:
  pictag classify --embeddings emb/ --labels-file labels.txt --out results.parquet
  pictag search emb/ --text "a red sports car" --top-k 20
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "embed",
        "pictag.store.options:EmbedConfig",
        "pictag.cli.embed:run",
        help="embed images once into a store, to re-classify and search without decoding again",
        description="Embed every image of a source into OUT, a folder (local or an fsspec URL such as "
        "s3://bucket/emb) of Parquet shards (key, embedding) with a "
        "manifest.json naming the model, weights and preprocessing. Unreadable images go to OUT/errors.csv. "
        "A killed run continues with --resume, each image stored exactly once.",
        examples=EXAMPLES,
    )


def run(cfg: EmbedConfig):
    from pictag.config import options_of
    from pictag.store.embed import embed

    return embed(**options_of(cfg))
