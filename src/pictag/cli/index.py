"""`pictag index`: a Parquet (key, offset, size) index of a TAR, read from its headers alone."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "index",
        help="index a TAR archive so images are read in place",
        description="Write a Parquet index (key, offset, size) of the images in a TAR by reading its headers only.",
    )
    p.add_argument("tar", help="an uncompressed .tar file")
    p.add_argument("--out", help="index path (default: beside the tar, NAME.index.parquet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from pictag.data import build_tar_index

    path = build_tar_index(args.tar, args.out)
    print(f"indexed {pq.read_metadata(path).num_rows:,} images of {args.tar} -> {path}")
    return 0
