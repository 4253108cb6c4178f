"""The `pictag` command. Subcommand modules are thin: they build a config and call the Python API."""

from __future__ import annotations

import importlib
import io
import logging
import sys

from pictag.cli.common import ONE_LINE, CommandParser, Parser, add_all_options

COMMANDS = [
    "classify",
    "index",
    "models",
    "fewshot",
    "fewshot-eval",
    "fewshot-train",
    "train",
    "splits",
    "evaluate",
    "serve",
    "embed",
    "search",
    "index-embeddings",
    "calibrate",
    "labelme-crops",
    "export",
    "download",
    "verify",
    "bench-engines",
]


def build_parser(options: bool = True) -> Parser:
    """The `pictag` parser. With `options` False, each command's options are added when that command parses, so
    that `pictag --help` imports none of the config modules (60 ms on an idle machine, from 450)."""
    parser = Parser(prog="pictag", description="Image classification with CLIP-family and pretrained vision models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (checkpoint mapping, timings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMANDS:
        importlib.import_module(f"pictag.cli.{name.replace('-', '_')}").add_parser(sub)
    if options:
        add_all_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one pictag command; returns the exit code (2 for bad input, with one line on stderr)."""
    from pictag.errors import AlreadyComplete, PictagError, storage_error

    # A path may hold bytes that are not UTF-8 (Python decodes them to lone surrogates): print them as those bytes,
    # as `ls` does, rather than fail on the summary line of a finished run (stderr already escapes them).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser(options=False)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="pictag: %(message)s")
    try:
        return args.func(args)
    except AlreadyComplete as exc:  # a scheduled rerun of a finished command succeeds
        print(f"pictag {args.command}: {exc}")
        return 0
    except PictagError as exc:
        print(f"pictag {args.command}: error: {str(exc).translate(ONE_LINE)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pictag {args.command}: interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130
    except Exception as exc:
        line = storage_error(exc)
        if line is None:
            raise  # a bug: its traceback is what a report needs
        print(f"pictag {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
