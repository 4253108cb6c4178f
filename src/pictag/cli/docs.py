"""docs/cli.md, generated from the config dataclasses: `python -m pictag.cli.docs` writes it, `--check` compares.

Each command is listed with what its --out names (a file or a folder) and its options by group, with their help and
default; `pictag train` lists its shared options, then each task's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pictag.cli.main import COMMANDS, build_parser
from pictag.config import field_group, field_help, option_name

DOC = Path(__file__).resolve().parents[3] / "docs" / "cli.md"
REGENERATE = "PYTHONPATH=src python -m pictag.cli.docs"


def render() -> str:
    """The text of docs/cli.md."""
    from pictag.train.options import TASK_OPTIONS, TrainConfig, train_config

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in sub._choices_actions}
    lines = [
        "# The command line",
        "",
        f"Generated from the config dataclasses by `{REGENERATE}`; do not edit by hand. Every command also takes",
        "`--config FILE` (YAML; flags override it) and `--print-config`; `pictag COMMAND --help` says the same.",
        "",
    ]
    for name in COMMANDS:
        config = sub.choices[name].get_default("func").args[0]
        lines += [f"## pictag {name}", "", helps[name][0].upper() + helps[name][1:] + ".", ""]
        if hasattr(config, "_out"):
            lines += [f"`{option_name(config, 'out')}` is a {config._out}.", ""]
        if name == "train":
            lines += _options(TrainConfig, train_config(None), skip=set())
            shared = {f.name for f in dataclasses.fields(TrainConfig)}
            for task in TASK_OPTIONS:
                lines += [f"### --task {task}", ""]
                lines += _options(train_config(task), train_config(task), skip=shared, heading="####")
        else:
            lines += _options(config, config, skip=set())
    return "\n".join(lines).rstrip() + "\n"


def _options(config: type, context: type, *, skip: set[str], heading: str = "###") -> list[str]:
    """The options of `config` not in `skip`, by group; groups and help as `pictag.cli.common` gives them."""
    helps = field_help(context)
    groups: dict[str, list[str]] = {}
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, False, "", ()) else f"`{default}`"
        text = helps.get(f.name, "").replace("|", "\\|")
        row = f"| `{option_name(config, f.name)}` | {shown} | {text} |"
        groups.setdefault(field_group(context, f.name), []).append(row)
    lines = []
    for title, rows in groups.items():
        lines += [f"{heading} {title}", "", "| option | default | what it does |", "| --- | --- | --- |", *rows, ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Write docs/cli.md, or with --check exit 1 when it is not current."""
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = render()
    if check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is not current: regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
