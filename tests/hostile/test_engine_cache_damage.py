"""A damaged engine cache entry is never used: bytes flipped inside a same-size file, an entry replaced by a file,
a file added or removed, or meta.json of an older format each give one warning line and a rebuild."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from pictag.models.engines.cache import META, cached

KEY = {"spec": "test", "weights_id": "random:0", "engine": "fake"}
WEIGHTS = bytes(range(256)) * 64


def build(folder):
    (folder / "model.onnx").write_bytes(WEIGHTS)
    (folder / "sub").mkdir()
    (folder / "sub" / "weights.bin").write_bytes(WEIGHTS[::-1])


def load(folder):
    return (folder / "model.onnx").read_bytes()  # accepts any bytes: only the checksum can tell


def flip(folder):
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[1000:1064] = bytes(b ^ 0xFF for b in data[1000:1064])  # 64 bytes, same size
    model.write_bytes(bytes(data))


def in_sub_folder(folder):
    (folder / "sub" / "weights.bin").write_bytes(b"\0" * len(WEIGHTS))


def replaced_by_a_file(folder):
    shutil.rmtree(folder)
    folder.write_text("not an entry")


def extra_file(folder):
    (folder / "stray.bin").write_bytes(b"x")


def missing_file(folder):
    (folder / "sub" / "weights.bin").unlink()


def old_meta(folder):
    meta = json.loads((folder / META).read_text())
    meta["files"] = {name: entry["bytes"] for name, entry in meta["files"].items()}  # sizes only
    (folder / META).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [flip, in_sub_folder, replaced_by_a_file, extra_file, missing_file, old_meta])
def test_a_damaged_entry_is_rebuilt_with_one_warning_line(caplog, damage):
    first = cached("fake", KEY, build, load)
    damage(first.folder)
    with caplog.at_level(logging.WARNING, logger="pictag.models.engines.cache"):
        again = cached("fake", KEY, build, load)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0] and "\n" not in warnings[0]
    assert not again.hit and again.value == WEIGHTS
    assert cached("fake", KEY, build, load).hit  # and the rebuilt entry is whole


def test_an_intact_entry_is_a_hit_without_a_warning(caplog):
    cached("fake", KEY, build, load)
    with caplog.at_level(logging.WARNING):
        assert cached("fake", KEY, build, load).hit
    assert not caplog.records
