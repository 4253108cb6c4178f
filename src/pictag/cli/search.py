"""`pictag search`: the store images nearest to a text or an image."""

from __future__ import annotations

from pictag.cli.common import add_command
from pictag.options import SearchConfig

EXAMPLES = """examples:
  pictag search emb/ --text "a red sports car" --top-k 20
  pictag search emb/ --image query.jpg --top-k 20 --paths
  pictag search emb/ --text "a dog on a beach" --out hits.csv
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "search",
        SearchConfig,
        "pictag.cli.search:run",
        help="find the images of an embedding store nearest to a text or an image",
        description="Search an embedding store with its saved index (`pictag index-embeddings`), or exactly by "
        "scanning it when it has none. Prints rank, score (cosine) and key, best first.",
        examples=EXAMPLES,
    )


def run(cfg: SearchConfig) -> str:
    from pictag.config import dump_config, sibling
    from pictag.storage.tables import write_table
    from pictag.store.search import search

    table = search(
        cfg.embeddings,
        text=cfg.text,
        image=cfg.image,
        k=cfg.top_k,
        search_param=cfg.search_param,
        paths=cfg.paths,
        model=cfg.model,
        checkpoint=cfg.checkpoint,
        device=cfg.device,
    )
    lines = [f"searched with: {table.schema.metadata[b'searched_with'].decode()}"]
    for row in table.to_pylist():
        where = f"  {row['path']}" if cfg.paths else ""
        lines.append(f"{row['rank']:4d}  {row['score']:.4f}  {row['key']}{where}")
    if cfg.out:
        lines.append(f"-> {write_table(cfg.out, [table], table.schema)[0]}")
        dump_config(cfg, sibling(cfg.out, ".config.yaml"))
    return "\n".join(lines)
