"""`pictag index-embeddings`: build the Faiss search index of an embedding store and save it beside it."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  pictag index-embeddings emb/                          # flat below 1M vectors, IVF from 1M (printed)
  pictag index-embeddings emb/ --index-type hnsw --m 32
  pictag index-embeddings emb/ --index-type ivf --nlist 4096 --target-recall 0.98
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "index-embeddings",
        help="build the search index of an embedding store",
        description="Build a Faiss inner-product index of every vector of an embedding store and save it as "
        "STORE/index.faiss (+ index.json). Approximate indexes are tuned by measuring recall@10 against exact "
        "search on store vectors, keeping the smallest nprobe/efSearch that reaches --target-recall.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="embedding store folder, from `pictag embed`")
    p.add_argument("--index-type", choices=["auto", "flat", "ivf", "hnsw"], default="auto", help="default auto")
    p.add_argument("--nlist", type=int, help="IVF inverted lists (default about sqrt(N))")
    p.add_argument("--m", type=int, help="HNSW neighbours per node (default 32)")
    p.add_argument("--search-param", type=int, help="fix nprobe (IVF) / efSearch (HNSW) instead of tuning it")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 to tune for (default 0.95)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from pictag.index.faiss_index import build_index
    from pictag.store.store import EmbeddingStore

    store = EmbeddingStore(args.store)
    with tqdm(total=len(store), unit="vec", desc="index", dynamic_ncols=True, disable=None) as bar:
        index = build_index(
            store,
            args.index_type,
            nlist=args.nlist,
            m=args.m,
            search_param=args.search_param,
            target_recall=args.target_recall,
            progress=bar.update,
        )
    info = index.info
    print(f"index type: {info.reason}")
    params = ", ".join(f"{k}={v}" for k, v in info.params.items())
    print(
        f"indexed {info.count:,} vectors in {info.build_seconds:.1f} s ({info.type}{': ' + params if params else ''}); "
        f"recall@10 against exact {info.recall_at_10:.3f} -> {index.save(store.folder)}"
    )
    if info.recall_at_10 is not None and info.recall_at_10 < args.target_recall:
        print(f"warning: recall@10 {info.recall_at_10:.3f} is below --target-recall {args.target_recall}")
    return 0
