"""Labels and prompt templates, as users write them. Free of torch, so light processes (an API) can check them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from pictag.errors import PictagError

UNKNOWN = "unknown"


def load_templates(name_or_path: str | Sequence[str] = "simple") -> list[str]:
    """Prompt templates by name ("simple", "imagenet80"), from a file (one per line), or as a list.

    Every template must hold one "{}" where the label goes.
    """
    if isinstance(name_or_path, str):
        builtin = resources.files("pictag") / "templates" / f"{name_or_path}.txt"
        if builtin.is_file():
            text = builtin.read_text()
        elif os.path.isfile(name_or_path):
            text = Path(name_or_path).read_text()
        else:
            raise PictagError(f"templates {name_or_path!r}: not a file, nor one of simple, imagenet80")
        templates = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    else:
        templates = list(name_or_path)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise PictagError(f"templates {name_or_path!r}: each needs exactly one {{}} for the label (bad: {bad[:2]})")
    return templates


def parse_labels(labels: str | Sequence[str] | None = None, labels_file: str | os.PathLike | None = None) -> list[str]:
    """Labels from a comma-separated string, a list, or a file with one label per line (# starts a comment)."""
    if labels_file is not None:
        if not os.path.isfile(labels_file):
            raise PictagError(f"labels file {labels_file} does not exist")
        items = [line.split("#", 1)[0] for line in Path(labels_file).read_text().splitlines()]
    elif isinstance(labels, str):
        items = labels.split(",")
    else:
        items = list(labels or [])
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise PictagError("the label list is empty: pass --labels a,b,c or --labels-file FILE")
    duplicates = sorted({x for x in items if items.count(x) > 1})
    if duplicates:
        raise PictagError(f"labels appear more than once: {', '.join(duplicates[:5])}")
    if UNKNOWN in items:
        raise PictagError(f"{UNKNOWN!r} is reserved for images below --threshold; rename that label")
    return items
