"""Argument groups shared by several commands, and the parser that reports errors on one line."""

from __future__ import annotations

import argparse
import sys

from pictag.models.registry import DEFAULT_MODEL


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2) instead of the whole usage block."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        help=f"model spec: open_clip:ARCH/TAG, hf:ORG/NAME or hf:/dir, timm:NAME (default $PICTAG_MODEL or {DEFAULT_MODEL})",
    )
    group.add_argument("--checkpoint", help="local weights file loaded into the --model architecture")
    group.add_argument(
        "--random-weights", action="store_true", default=None, help="random weights, for tests and benchmarks"
    )


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    group.add_argument(
        "--workers", type=int, help="decoding processes (default: one per core with a GPU, half the cores on CPU)"
    )
    group.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    group.add_argument(
        "--precision", choices=["fp32", "tf32", "fp16", "bf16"], help="default: fp32 on CPU, half on GPU"
    )
    group.add_argument("--config", help="YAML file of options; command-line flags override it")


def add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        help='images: folder, image, file.tar, "shards/{000000..000009}.tar", table.csv/.parquet, s3://..., ...',
    )
    parser.add_argument("--index", help="Parquet (key, offset, size) index of a TAR source, from `pictag index`")
    parser.add_argument(
        "--index-columns", help="the index's key, offset and size columns, e.g. key=filename,offset=start,size=length"
    )
    parser.add_argument("--path-column", help="column of image paths in a CSV/Parquet table source (default path)")


def options(args: argparse.Namespace, *skip: str) -> dict:
    """The parsed flags as config overrides, leaving out the CLI's own plumbing."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "func", "config", "verbose", *skip)}


def add_store_model_args(parser: argparse.ArgumentParser) -> None:
    """Encoder options of commands that read an embedding store: its manifest names the model, these override it."""
    group = parser.add_argument_group("model (default: the store's)")
    group.add_argument("--model", help="override the store's model spec (it must be the same weights)")
    group.add_argument("--checkpoint", help="override the store's checkpoint file (it must be the same weights)")
    group.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
