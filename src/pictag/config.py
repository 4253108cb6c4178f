"""Task configs are dataclasses: filled from YAML, overridden from the command line, written beside the outputs.

A config class documents each field in its docstring's `Attributes:` section (Google style); `field_help` reads
that, so the CLI, the Python API and the docs share one description of every option.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from pictag.errors import COMMAND_LINE, PictagError
from pictag.storage.files import is_url, write_file

C = TypeVar("C")


def cache_dir() -> Path:
    """Where pictag caches derived data (text prototypes, tar indexes): $PICTAG_CACHE, else ~/.cache/pictag."""
    return Path(
        os.environ.get("PICTAG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pictag"
    )


def load_config(cls: type[C], path: str | os.PathLike | None = None, **overrides: Any) -> C:
    """Build a config from an optional YAML file, then overrides whose value is not None.

    Raises:
        PictagError: unreadable YAML, unknown keys (the valid ones are listed), or missing required keys.
    """
    values: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise PictagError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise PictagError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise PictagError(f"config file {path} must hold a mapping of option: value")
        values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    _take_renamed(cls, values)
    for name, default in getattr(cls, "_unused_defaults", {}).items():  # see `pictag.train.options`
        if name in values and values[name] == default:
            del values[name]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(values.keys() - names)
    if unknown:
        raise PictagError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    missing = [name for name in getattr(cls, "_required", ()) if values.get(name) in (None, "", [])]
    if missing:
        raise PictagError(f"missing {', '.join(option_name(cls, name) for name in missing)}: see --help")
    try:
        return cls(**values)
    except TypeError as exc:
        raise PictagError(f"incomplete config: {exc}") from None


def options_of(cfg: Any) -> dict[str, Any]:
    """The fields of the config `cfg` that are set (not None), as keyword options: a command runs its Python API
    function with them (`classify(**options_of(cfg))`), which builds the same config again."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is not None}


def renamed_options(cls: type) -> dict[str, str | tuple[str, str]]:
    """The former spellings a config still takes, for one release, from the `_renamed` of its bases: old name ->
    field, or -> (field, group) for a number that became one group of a per-group option (lr_head: --lr head=).
    An upper-case old name was a positional argument (MODEL: --model)."""
    names = {f.name for f in dataclasses.fields(cls)}
    found: dict[str, str | tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        found.update(vars(klass).get("_renamed", {}))
    return {old: new for old, new in found.items() if (new if isinstance(new, str) else new[0]) in names}


_warned: set[str] = set()


def _take_renamed(cls: type, values: dict[str, Any]) -> None:
    """Move the values given by a former spelling to their field, warning once per spelling on stderr."""
    for old, new in renamed_options(cls).items():
        if old not in values:
            continue
        value = values.pop(old)
        if value is None:  # an older resolved config lists every option, the unset ones as null
            continue
        field, group = (new, None) if isinstance(new, str) else new
        if COMMAND_LINE.get():
            was = f"the positional {old}" if old.isupper() else "--" + old.replace("_", "-")
            now = option_name(cls, field)
        else:
            was, now = old, field
        message = f"{was} is deprecated: use {now}" + (f" {group}=" if group else "")
        if message not in _warned:
            _warned.add(message)
            print(f"pictag: {message}", file=sys.stderr)
        if group is None:  # in a config written before the rename, the former spelling is the one that was read
            values[field] = value
        else:
            values[field] = ",".join(str(v) for v in (values.get(field), f"{group}={value}") if v is not None)


def option_name(cls: type, name: str) -> str:
    """How the command line spells a config field: SOURCE for a positional argument, --top-k for an option."""
    return name.upper() if name in getattr(cls, "_positional", ()) else "--" + name.replace("_", "-")


_ATTRIBUTE = re.compile(r"^(\s+)(\w+): (.*)$")


def field_help(cls: type) -> dict[str, str]:
    """The description of each field, from the `Attributes:` sections of the class and its bases (nearest wins)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found.update(_attributes(inspect.getdoc(klass) or ""))
    return found


def field_group(cls: type, name: str) -> str:
    """The option group of a field: the first docstring line of the base that declares it ("model", "runtime")."""
    for klass in reversed(cls.__mro__):
        if name in getattr(klass, "__annotations__", {}) and klass is not cls:
            return (inspect.getdoc(klass) or "").splitlines()[0]
    return "options"


def _attributes(doc: str) -> dict[str, str]:
    lines = doc.splitlines()
    if "Attributes:" not in lines:
        return {}
    found: dict[str, str] = {}
    name, indent = None, None
    for line in lines[lines.index("Attributes:") + 1 :]:
        match = _ATTRIBUTE.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent, name = len(match.group(1)), match.group(2)
            found[name] = match.group(3).strip()
        elif name and line.strip() and len(line) - len(line.lstrip()) > (indent or 0):
            found[name] += " " + line.strip()
        else:
            break
    return found


def dump_config(cfg: Any, path: str | os.PathLike) -> Path | str:
    """Write the resolved config as YAML, so a run can be repeated with `--config` (a path or an fsspec URL)."""
    write_file(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False).encode())
    return os.fspath(path) if is_url(os.fspath(path)) else Path(path)


def sibling(out: str | os.PathLike, suffix: str) -> Path | str:
    """A file beside an output: sibling("runs/results.csv", ".errors.csv") is runs/results.errors.csv.

    For an fsspec URL it is the URL of that file (a string; `Path` would fold its "//").
    """
    if is_url(os.fspath(out)):
        folder, _, name = os.fspath(out).rpartition("/")
        stem, dot, _ = name.rpartition(".")
        return f"{folder}/{stem if dot else name}{suffix}"
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + suffix if out.suffix else out.name + suffix)


class Checked:
    """Checks the numbers of every option group a config is made of, whichever path built it (CLI, YAML, Python).

    A group lists its lower bounds in `_at_least`, and the interval of each real number in `_within`, written as
    in mathematics: "[0, 1)" allows 0 but not 1, "(0, inf)" any positive number. A number checked by `_within` must
    also be finite (nan passes every comparison). Both are gathered over all the config's bases.
    """

    _at_least: ClassVar[dict[str, int]] = {}
    _within: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for klass in type(self).__mro__:
            for name, least in vars(klass).get("_at_least", {}).items():
                value = getattr(self, name)
                if value is not None and value < least:
                    raise PictagError(f"{option_name(type(self), name)} must be at least {least}, not {value}")
            for name, interval in vars(klass).get("_within", {}).items():
                value = getattr(self, name)
                if value is not None:
                    check_within(value, interval, option_name(type(self), name))


def check_within(value: float, interval: str, option: str) -> float:
    """`value` when it is a finite number inside `interval` ("[0, 1)", "(0, inf)", ...); see `Checked`.

    Raises:
        PictagError: anything else, naming the option and the interval.
    """
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or (value < low if interval[0] == "[" else value <= low)
        or (value > high if interval[-1] == "]" else value >= high)
    ):
        raise PictagError(f"{option} must be a finite number in {interval}, not {value!r}")
    return value


def group_values(text: str | float | None, option: str, interval: str) -> dict[str | None, float]:
    """The numbers of a per-group option: "1e-4" gives {None: 1e-4} (every group), "backbone=1e-5,head=3e-4" gives
    {"backbone": 1e-5, "head": 3e-4}; each a finite number inside `interval` (see `Checked`). The names are the
    task's to check (`pictag.train.optim.per_group`).

    Raises:
        PictagError: an item that is not NAME=NUMBER, or a number outside the interval.
    """
    if text is None or str(text).strip() == "":
        return {}
    items = [(None, str(text))] if "=" not in str(text) else [item.partition("=")[::2] for item in str(text).split(",")]
    values: dict[str | None, float] = {}
    for name, number in items:
        name = name.strip() if name is not None else None
        try:
            value = float(number)
        except ValueError:
            example = f"{option} 1e-4 or {option} head=1e-3,backbone=1e-5"
            raise PictagError(f"{option} {text!r}: give NAME=NUMBER pairs or one number, e.g. {example}") from None
        values[name] = check_within(value, interval, option if name is None else f"{option} {name}")
    return values
