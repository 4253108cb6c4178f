"""The command line, generated from the config dataclasses: each option is declared once, by the component
that owns it (`pictag.models.options`, `pictag.train.options`, ...).

A field becomes `--field-name` (or a positional argument, when its class lists it in `_positional`), with its help
from the class docstring, its choices from a `Literal` type, and its group from the base class that declares it.
Every command also takes `--config FILE` (YAML; flags override it) and `--print-config`.

A config class may also say, as class attributes: `_positional` and `_required` fields, `_repeatable` options
(--model a --model b), `_out` ("file" or "folder": what its --out names), and `_renamed` (former spellings, still
taken for one release; see `pictag.config.renamed_options`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal

# One line, even where a message quotes a value typed with a line break in it: every character that splits lines
# (str.splitlines's, \x1c and \u2028 among them) is written as its escape.
ONE_LINE = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2) instead of the whole usage block."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message.translate(ONE_LINE)} (see {self.prog} --help)\n")
        sys.exit(2)


class CommandParser(Parser):
    """A command's parser. Its options are added when it first parses (or by `add_options`), so that `pictag --help`
    imports no config module: only the command that runs pays for building its config class and its options.

    Attributes:
        config: The command's config class, as "module:Class".
        target: What runs on the resolved config, as "module:function".
        config_for: Instead of `config`, a "module:function" that picks the config class from the command's
            arguments (`pictag train --task fusion` takes fusion's options).
        explain_unknown: A "module:function" that, given the arguments the command did not take, says in one line
            why (`--embed-dim is an option of --task arcface`), or returns None.
    """

    config: str | None = None
    target: str | None = None
    config_for: str | None = None
    explain_unknown: str | None = None
    _has_options: bool = False

    def add_options(self, args: Sequence[str] = ()) -> None:
        """Add the config's options, once; `args` are the command's arguments, for `config_for`."""
        if self._has_options or self.config is None:
            return
        self._has_options = True
        config = _resolve(self.config_for)(list(args)) if self.config_for else _resolve(self.config)
        add_config_args(self, config)
        self.set_defaults(func=partial(execute, config, self.target))

    def parse_known_args(self, args=None, namespace=None):
        self.add_options(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        why = _resolve(self.explain_unknown)(extras) if extras and self.explain_unknown else None
        if why:
            self.error(why)
        return namespace, extras


def add_command(
    sub,
    name: str,
    config: str,
    target: str,
    *,
    help: str,
    description: str,
    examples: str = "",
    config_for: str | None = None,
    explain_unknown: str | None = None,
) -> CommandParser:
    """A subcommand whose options are the fields of `config` ("module:Class"); it runs `target` ("module:function")
    on the config. `sub` is a subparsers action whose parser class is `CommandParser`.

    The target gets the resolved config and returns a result with `summary()`, or the text to print.
    """
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.config, parser.target, parser.config_for = config, target, config_for
    parser.explain_unknown = explain_unknown
    return parser


def add_all_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of every command below `parser` now, as if each had parsed no arguments."""
    if isinstance(parser, CommandParser):
        parser.add_options()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_all_options(child)


def _resolve(reference: str) -> Any:
    module, attr = reference.split(":")
    return getattr(importlib.import_module(module), attr)


def add_config_args(parser: argparse.ArgumentParser, config: type, only: Iterable[str] | None = None) -> None:
    """Add one argument per field of `config` (or the fields in `only`), then --config and --print-config."""
    from pictag.config import field_group, field_help, option_name, renamed_options

    helps = field_help(config)
    if "out" in helps and hasattr(config, "_out"):  # every command says whether its output is a file or a folder
        helps["out"] = f"{helps['out']} ({option_name(config, 'out')} is a {config._out})"
    hints = typing.get_type_hints(config)
    positional = getattr(config, "_positional", ())
    repeatable = getattr(config, "_repeatable", ())
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(config):
        if only is not None and f.name not in only:
            continue
        title = field_group(config, f.name)
        target = (
            parser
            if title == "options"
            else groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        )
        kwargs = _argument(f, hints[f.name], helps.get(f.name, ""))
        if f.name in positional:
            target.add_argument(f.name, nargs="*" if kwargs.pop("list", False) else "?", **kwargs)
        else:
            kwargs.pop("list", None)
            if f.name in repeatable:  # --model a --model b
                kwargs["action"] = "append"
            target.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)
    for name in renamed_options(config):  # former spellings: they still work, warn, and are left out of --help
        if name.isupper():
            parser.add_argument(name, nargs="?", help=argparse.SUPPRESS)
        else:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, help=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE", help="YAML file of options; command-line flags override it")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def execute(config: type, target: str, args: argparse.Namespace) -> int:
    """Build the config from --config and the flags, then print it or run the command on it."""
    from pictag.errors import COMMAND_LINE

    token = COMMAND_LINE.set(True)  # errors name flags, not keyword arguments
    try:
        return _execute(config, target, args)
    finally:
        COMMAND_LINE.reset(token)


def _execute(config: type, target: str, args: argparse.Namespace) -> int:
    import yaml

    from pictag.config import load_config

    cfg = load_config(config, args.config, **overrides(args))
    if args.print_config:
        print(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), end="")
        return 0
    result = _resolve(target)(cfg)
    text = result if isinstance(result, str) else result.summary()
    if text:
        print(text)
    return 0


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags that were given, as config overrides (the CLI's own plumbing left out)."""
    plumbing = ("command", "func", "config", "print_config", "verbose", "mode")
    return {k: v for k, v in vars(args).items() if k not in plumbing and v not in (None, [])}


def _argument(f: dataclasses.Field, hint: Any, text: str) -> dict[str, Any]:
    """argparse keywords for one field: every default is None, so that only given flags override the YAML."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    default = f.default if f.default is not dataclasses.MISSING else None
    if default not in (None, False, "", ()) and "default" not in text:
        text = f"{text[:-1] if text.endswith('.') else text} (default {default})"
    kwargs: dict[str, Any] = {"help": text.replace("%", "%%"), "default": None}
    literal = next((k for k in kinds if typing.get_origin(k) is Literal), None)
    if literal is not None:
        kwargs["choices"] = typing.get_args(literal)
    elif bool in kinds:
        kwargs["action"] = "store_true"
    elif len(kinds) == 1 and kinds[0] in (int, float):
        kwargs["type"] = kinds[0]
    if any(typing.get_origin(k) is list for k in kinds):
        kwargs["list"] = True  # positional: any number of values; option: one comma-separated string
    return kwargs


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
