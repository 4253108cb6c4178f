"""`pictag index-embeddings`: build the Faiss search index of an embedding store and save it beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.store.options import IndexEmbeddingsConfig

EXAMPLES = """examples:
  pictag index-embeddings emb/                          # flat below 1M vectors, IVF from 1M (printed)
  pictag index-embeddings emb/ --index-type hnsw --m 32
  pictag index-embeddings emb/ --index-type ivf --nlist 4096 --target-recall 0.98
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "index-embeddings",
        "pictag.store.options:IndexEmbeddingsConfig",
        "pictag.cli.index_embeddings:run",
        help="build the search index of an embedding store",
        description="Build a Faiss inner-product index of every vector of an embedding store and save it as "
        "STORE/index.faiss (+ index.json). Approximate indexes are tuned by measuring recall@10 against exact "
        "search on store vectors, keeping the smallest nprobe/efSearch that reaches --target-recall.",
        examples=EXAMPLES,
    )


def run(cfg: IndexEmbeddingsConfig) -> str:
    from tqdm.auto import tqdm

    from pictag.index.faiss_index import build_index
    from pictag.store.store import EmbeddingStore

    store = EmbeddingStore(cfg.embeddings)
    with tqdm(total=len(store), unit="vec", desc="index", dynamic_ncols=True, disable=None) as bar:
        index = build_index(
            store,
            cfg.index_type,
            nlist=cfg.nlist,
            m=cfg.m,
            search_param=cfg.search_param,
            target_recall=cfg.target_recall,
            progress=bar.update,
        )
    info = index.info
    params = ", ".join(f"{k}={v}" for k, v in info.params.items())
    lines = [
        f"index type: {info.reason}",
        f"indexed {info.count:,} vectors in {info.build_seconds:.1f} s ({info.type}{': ' + params if params else ''}); "
        f"recall@10 against exact {info.recall_at_10:.3f} -> {index.save(store.folder)}",
    ]
    if info.recall_at_10 is not None and info.recall_at_10 < cfg.target_recall:
        lines.append(f"warning: recall@10 {info.recall_at_10:.3f} is below --target-recall {cfg.target_recall}")
    return "\n".join(lines)
