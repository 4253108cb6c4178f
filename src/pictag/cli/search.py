"""`pictag search`: the store images nearest to a text or an image."""

from __future__ import annotations

import argparse

from pictag.cli.common import add_store_model_args

EXAMPLES = """examples:
  pictag search emb/ --text "a red sports car" --k 20
  pictag search emb/ --image query.jpg --k 20 --paths
  pictag search emb/ --text "a dog on a beach" --out hits.csv
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="find the images of an embedding store nearest to a text or an image",
        description="Search an embedding store with its saved index (`pictag index-embeddings`), or exactly by "
        "scanning it when it has none. Prints rank, score (cosine) and key, best first.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="embedding store folder, from `pictag embed`")
    p.add_argument("--text", help="query text")
    p.add_argument("--image", help="query image file")
    p.add_argument("--k", type=int, default=10, help="results (default 10)")
    p.add_argument("--search-param", type=int, help="nprobe (IVF) or efSearch (HNSW): trade speed for recall")
    p.add_argument("--paths", action="store_true", help="show where each image is (path, URL or tar member)")
    p.add_argument("--out", help="also write the results to this .csv or .parquet")
    add_store_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.pipeline.parts import TableWriter
    from pictag.store.search import search

    table = search(
        args.store,
        text=args.text,
        image=args.image,
        k=args.k,
        search_param=args.search_param,
        paths=args.paths,
        model=args.model,
        checkpoint=args.checkpoint,
        device=args.device,
    )
    print(f"searched with: {table.schema.metadata[b'searched_with'].decode()}")
    for row in table.to_pylist():
        where = f"  {row['path']}" if args.paths else ""
        print(f"{row['rank']:4d}  {row['score']:.4f}  {row['key']}{where}")
    if args.out:
        writer = TableWriter(args.out)
        writer.write(table)
        print(f"-> {writer.close(table.schema)}")
    return 0
