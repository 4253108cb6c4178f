"""Exported models on disk, in $PICTAG_CACHE/engines: built once, shared by every later run and process.

An entry is a folder named by a digest of what defines it (weights, engine, precision of the file, input size,
opset, library versions, ...). It is built in a temporary folder and renamed into place, so a reader never sees
half of one; a lock file makes a second writer wait for the first and then reuse its entry instead of exporting
again. `meta.json`, written last, records the key, the file sizes and the export time. An entry that fails to
load (truncated, foreign, or from a killed build on a file system without atomic rename) is a warning, and is
rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pictag.config import cache_dir

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
    with _locked(folder.with_name(folder.name + ".lock")):
        if folder.is_dir():
            started = time.perf_counter()
            try:
                meta = _check(folder, key)
                return Cached(load(folder), folder, True, meta.get("build_s", 0.0), time.perf_counter() - started)
            except Exception as exc:  # whatever a damaged file makes the runtime raise
                log.warning("engine cache entry %s is corrupt (%s): rebuilding it", folder, _first_line(exc))
                _discard(folder)
        started = time.perf_counter()
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir()
        try:
            build(tmp)
            build_s = time.perf_counter() - started
            files = {p.name: p.stat().st_size for p in tmp.iterdir()}
            (tmp / META).write_text(json.dumps({"key": key, "files": files, "build_s": build_s}, default=str))
            try:
                os.rename(tmp, folder)
            except OSError:  # another writer that took no lock (a foreign file system) got there first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        started = time.perf_counter()
        return Cached(load(folder), folder, False, build_s, time.perf_counter() - started)


def _check(folder: Path, key: dict[str, Any]) -> dict:
    """The entry's meta, after checking that it is complete: the key and the size of every file match."""
    meta = json.loads((folder / META).read_text())
    if meta.get("key") != json.loads(json.dumps(key, default=str)):
        raise ValueError("its meta.json names another key")
    for name, size in meta["files"].items():
        if (folder / name).stat().st_size != size:
            raise ValueError(f"{name} is {(folder / name).stat().st_size} bytes, not {size}")
    return meta


def _discard(folder: Path) -> None:
    # Renamed away first, so that no reader can open a half-deleted entry.
    trash = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.corrupt")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
