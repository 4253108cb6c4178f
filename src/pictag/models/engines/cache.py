"""Exported models on disk, in $PICTAG_CACHE/engines: built once, shared by every later run and process.

An entry is a folder named by a digest of what defines it (weights, engine, precision of the file, input size,
opset, library versions, ...). It is built in a temporary folder and renamed into place, so a reader never sees
half of one; a lock file makes a second writer wait for the first and then reuse its entry instead of exporting
again. `meta.json`, written last, records the key, each file's size and SHA-256, and the export time. Every load
checks them: an entry whose bytes changed (flipped bits in a same-size file), that fails to load (truncated,
foreign, or from a killed build on a file system without atomic rename), or that is not a folder at all is one
warning line, and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pictag.config import cache_dir
from pictag.storage.files import atomic_folder, discard
from pictag.storage.lock import waiting

log = logging.getLogger(__name__)

T = TypeVar("T")
META = "meta.json"


@dataclass
class Cached(Generic[T]):
    """A loaded cache entry.

    Attributes:
        value: What `load` made of the entry's folder.
        folder: The entry.
        hit: True when the entry was already there; False when this call built it.
        build_s: Seconds the export took, when it was built (by this call or the one that built it).
        load_s: Seconds this call spent loading it (the cache-hit time, when `hit`).
    """

    value: T
    folder: Path
    hit: bool
    build_s: float
    load_s: float


def entry_folder(kind: str, key: dict[str, Any]) -> Path:
    """Where the entry of `key` lives."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir() / "engines" / kind / digest


def cached(kind: str, key: dict[str, Any], build: Callable[[Path], None], load: Callable[[Path], T]) -> Cached[T]:
    """Load the entry of `key`, building it first with `build(folder)` if it is missing or corrupt.

    Args:
        kind: The cache's subfolder (e.g. "onnx", "openvino").
        key: Everything the entry depends on; JSON-serialisable.
        build: Writes the entry's files into the (empty, temporary) folder it is given.
        load: Turns an entry's folder into the runtime object; any exception means a corrupt entry.
    """
    folder = entry_folder(kind, key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with waiting(folder.with_name(folder.name + ".lock")):
        if folder.exists() and not folder.is_dir():
            log.warning("engine cache entry %s is not a folder: rebuilding it", folder)
            discard(folder)
        if folder.is_dir():
            started = time.perf_counter()
            try:
                meta = _check(folder, key)
                return Cached(load(folder), folder, True, meta.get("build_s", 0.0), time.perf_counter() - started)
            except Exception as exc:  # whatever a damaged file makes the runtime raise
                log.warning("engine cache entry %s is corrupt (%s): rebuilding it", folder, _first_line(exc))
                discard(folder)
        started = time.perf_counter()
        # Not replacing: another writer that took no lock (a foreign file system) got there first with an equal entry.
        with atomic_folder(folder, replace=False) as tmp:
            build(tmp)
            build_s = time.perf_counter() - started
            files = {name: _fingerprint(tmp / name) for name in _files(tmp)}
            (tmp / META).write_text(json.dumps({"key": key, "files": files, "build_s": build_s}, default=str))
        started = time.perf_counter()
        return Cached(load(folder), folder, False, build_s, time.perf_counter() - started)


def _check(folder: Path, key: dict[str, Any]) -> dict:
    """The entry's meta, after checking that it is whole: the key, and the size and SHA-256 of every file, match."""
    meta = json.loads((folder / META).read_text())
    if meta.get("key") != json.loads(json.dumps(key, default=str)):
        raise ValueError("its meta.json names another key")
    files = meta["files"]
    if not isinstance(files, dict) or sorted(files) != _files(folder):
        raise ValueError(f"it holds {', '.join(_files(folder))}, its meta.json lists {', '.join(files)}")
    for name, recorded in files.items():
        found = _fingerprint(folder / name)
        if found != recorded:
            same_size = isinstance(recorded, dict) and recorded.get("bytes") == found["bytes"]
            raise ValueError(f"{name} does not match the {'SHA-256' if same_size else 'size'} recorded at its build")
    return meta


def _files(folder: Path) -> list[str]:
    """The entry's files (its sub-folders' too), as paths relative to it, except meta.json."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != META)


def _fingerprint(path: Path) -> dict:
    # A SHA-256 of every file on every load: a flipped byte in a same-size model.onnx loads fine and changes the
    # scores, so the size alone is no check. It costs 0.36 s per hit for a 350 MiB entry (a ViT-B/32 image tower).
    with open(path, "rb") as f:
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
