"""Task configs are dataclasses: filled from YAML, overridden from the command line, written beside the outputs.

A config class documents each field in its docstring's `Attributes:` section (Google style); `field_help` reads
that, so the CLI, the Python API and the docs share one description of every option.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pictag.errors import PictagError
from pictag.storage.files import is_url

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
    if is_url(os.fspath(path)):
        import fsspec

        with fsspec.open(os.fspath(path), "w") as f:
            f.write(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        return os.fspath(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return path


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
