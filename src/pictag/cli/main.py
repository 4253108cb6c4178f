"""The `pictag` command. Subcommand modules are thin: they build a config and call the Python API."""

from __future__ import annotations

import importlib
import logging
import sys

from pictag.cli.common import Parser

COMMANDS = [
    "classify",
    "index",
    "models",
    "fewshot",
    "fewshot-eval",
    "fewshot-train",
    "train",
    "serve",
    "embed",
    "search",
    "index-embeddings",
    "calibrate",
    "export",
]


def build_parser() -> Parser:
    parser = Parser(prog="pictag", description="Image classification with CLIP-family and pretrained vision models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (checkpoint mapping, timings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"pictag.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one pictag command; returns the exit code (2 for bad input, with one line on stderr)."""
    from pictag.errors import PictagError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="pictag: %(message)s")
    try:
        return args.func(args)
    except PictagError as exc:
        print(f"pictag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pictag {args.command}: interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
