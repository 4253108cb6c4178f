"""WebDataset-style shard patterns: ``{000000..000009}`` ranges, ``{a,b}`` lists and globs."""

from __future__ import annotations

import re

from pictag.errors import PictagError

_GROUP = re.compile(r"\{([^{}]*(?:,|\.\.)[^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
_GLOB_CHARS = frozenset("*?[")


def is_pattern(text: str) -> bool:
    """Whether ``text`` holds a brace group or a glob character."""
    return bool(_GROUP.search(text)) or not _GLOB_CHARS.isdisjoint(text)


def has_glob(text: str) -> bool:
    """Whether ``text`` still needs a filesystem glob after brace expansion."""
    return not _GLOB_CHARS.isdisjoint(text)


def expand_braces(pattern: str) -> list[str]:
    """Every string ``pattern`` stands for, in order; ``{007..010}`` keeps the zero padding of its first bound."""
    match = _GROUP.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for alt in _alternatives(match.group(1)) for name in expand_braces(head + alt + tail)]


def _alternatives(body: str) -> list[str]:
    if ".." not in body:
        return body.split(",")
    bounds = _RANGE.match(body)
    if bounds is None or int(bounds.group(1)) > int(bounds.group(2)):
        raise PictagError(f"cannot expand {{{body}}}: write a rising numeric range such as {{000000..000009}}")
    lo, hi = bounds.groups()
    width = len(lo) if lo.startswith("0") else 0
    return [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
