"""`pictag embed`: embed an image collection once into an embedding store (Parquet shards + manifest)."""

from __future__ import annotations

import argparse

from pictag.cli.common import add_model_args, add_runtime_args, add_source_args, options

EXAMPLES = """examples:
  pictag embed data/zip1.tar --index data/index.parquet --model open_clip:ViT-B-32/openai --out emb/
  pictag embed photos/ --out emb/ --dtype float32
  pictag embed "shards/{000000..000009}.tar" --out emb/ --resume     # finish an interrupted run
then:
  pictag classify --embeddings emb/ --labels-file labels.txt --out results.parquet
  pictag search emb/ --text "a red sports car" --k 20
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed images once into a store, to re-classify and search without decoding again",
        description="Embed every image of a source into OUT, a folder of Parquet shards (key, embedding) with a "
        "manifest.json naming the model, weights and preprocessing. Unreadable images go to OUT/errors.csv. "
        "A killed run continues with --resume, each image stored exactly once.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_args(p)
    p.add_argument("--out", help="the store folder")
    p.add_argument("--dtype", choices=["float16", "float32"], help="stored precision (default float16)")
    p.add_argument(
        "--unit-size", type=int, help="images per unit of work (default 1000): each unit is committed as one shard"
    )
    p.add_argument("--max-pixels", type=int, help="refuse larger images as decompression bombs (default 100M)")
    p.add_argument("--resume", action="store_true", default=None, help="finish an interrupted run")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing store")
    add_model_args(p)
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.config import load_config
    from pictag.store.embed import EmbedConfig
    from pictag.store.embed import run as embed

    result = embed(load_config(EmbedConfig, args.config, **options(args)))
    print(result.summary())
    return 0
