"""One lazy registry for every kind of plug-in: heads, model backends, training tasks, services and source kinds.

A registry maps a name to "module:attr" and imports the module the first time the name is used, the way
`pictag/__init__.py` resolves its exports. So a base module lists its implementations without importing them, no
import cycle runs through it, and `pictag --help` pays for none of them.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar

from pictag.errors import PictagError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of thing, each resolved on first use from "module:attr" (or registered as the object).

    Args:
        kind: What the names name, for error messages ("head", "model scheme", ...).
        entries: name -> "module:attr", in the order `names()` lists them.
    """

    def __init__(self, kind: str, entries: Mapping[str, str]):
        self.kind = kind
        self._targets: dict[str, str | T] = dict(entries)

    def register(self, name: str, target: str | T) -> None:
        """Add (or replace) an entry: a "module:attr" string, resolved on first use, or the object itself."""
        self._targets[name] = target

    def names(self) -> list[str]:
        """The registered names, in registration order; nothing is imported."""
        return list(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def get(self, name: str) -> T:
        """The object registered under `name`, importing its module the first time.

        Raises:
            PictagError: an unknown name (listing the known ones, with the closest as a suggestion), or an entry whose
                module fails to import (naming the entry, the module and the cause).
        """
        if name not in self._targets:
            raise PictagError(self.unknown(name))
        target = self._targets[name]
        if not isinstance(target, str):
            return target
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a missing dependency, or any error the module raises as it loads
            cause = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
            raise PictagError(
                f"{self.kind} {name!r} cannot be loaded: importing {module_name} failed: {cause}"
            ) from exc
        try:
            value = getattr(module, attr)
        except AttributeError as exc:
            raise PictagError(f"{self.kind} {name!r} cannot be loaded: {module_name} has no {attr}") from exc
        self._targets[name] = value
        return value

    def unknown(self, name: str, names: list[str] | None = None, kind: str | None = None) -> str:
        """The message for a name that is not registered: the known names (or `names`), and the closest match."""
        names = self.names() if names is None else names
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {kind or self.kind} {name!r}: use one of {', '.join(names)}{hint}"
