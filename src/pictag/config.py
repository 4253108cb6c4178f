"""Task configs are dataclasses: filled from YAML, overridden from the command line, written beside the outputs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pictag.errors import PictagError

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
    try:
        return cls(**values)
    except TypeError as exc:
        raise PictagError(f"incomplete config: {exc}") from None


def dump_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, so a run can be repeated with `--config`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return path


def sibling(out: str | os.PathLike, suffix: str) -> Path:
    """A file beside an output: sibling("runs/results.csv", ".errors.csv") is runs/results.errors.csv."""
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + suffix if out.suffix else out.name + suffix)
