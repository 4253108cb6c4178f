"""`pictag index`: a Parquet (key, offset, size) index of a TAR, read from its headers alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.data.options import IndexConfig


def add_parser(sub) -> None:
    add_command(
        sub,
        "index",
        "pictag.data.options:IndexConfig",
        "pictag.cli.index:run",
        help="index a TAR archive so images are read in place",
        description="Write a Parquet index (key, offset, size) of the images in a TAR by reading its headers only.",
    )


def run(cfg: IndexConfig) -> str:
    import pyarrow.parquet as pq

    from pictag.data import build_tar_index

    path = build_tar_index(cfg.tar, cfg.out)
    return f"indexed {pq.read_metadata(path).num_rows:,} images of {cfg.tar} -> {path}"
