"""`pictag models`: the model specs and weight tags pictag can build."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list model specs and weight tags",
        description="List model specs usable with --model. open_clip specs end in /TAG (the weights); "
        "hf: takes any hub id or a local save_pretrained directory; timm: lists pretrained names.",
    )
    p.add_argument("scheme", nargs="?", choices=["open_clip", "hf", "timm"], help="only this backend")
    p.add_argument("--grep", help="only specs containing this text (case-insensitive)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pictag.models.registry import list_models

    needle = (args.grep or "").lower()
    for spec in list_models(args.scheme):
        if needle in spec.lower():
            print(spec)
    return 0
