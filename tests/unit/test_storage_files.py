"""Whole files and folders, and the waiting lock: a reader or a crash sees the old output or the new one, never half."""

from __future__ import annotations

import threading

import fsspec
import pytest

from pictag.storage.files import atomic_folder, discard, write_file
from pictag.storage.lock import waiting


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_folder_replaces_the_old_one_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "runs" / "best"
    with atomic_folder(target) as tmp:
        (tmp / "model.bin").write_bytes(b"first")
        assert not target.exists()  # nothing at the name until the folder is whole
    with atomic_folder(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "model.bin").write_bytes(b"second")
    assert (target / "sub" / "model.bin").read_bytes() == b"second" and not (target / "model.bin").exists()
    assert _siblings(target.parent) == ["best"]


def test_a_failed_writer_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "best"
    with atomic_folder(target) as tmp:
        (tmp / "model.bin").write_bytes(b"good")
    with pytest.raises(RuntimeError, match="export failed"), atomic_folder(target) as tmp:
        (tmp / "model.bin").write_bytes(b"half")
        raise RuntimeError("export failed")
    assert (target / "model.bin").read_bytes() == b"good" and _siblings(tmp_path) == ["best"]


def test_without_replace_the_first_writer_wins(tmp_path):
    target = tmp_path / "entry"
    with atomic_folder(target, replace=False) as late:
        (late / "model.onnx").write_bytes(b"late")
        with atomic_folder(target, replace=False) as early:  # another writer finishes in the meantime
            (early / "model.onnx").write_bytes(b"early")
    assert (target / "model.onnx").read_bytes() == b"early" and _siblings(tmp_path) == ["entry"]


def test_discard_removes_a_file_or_a_folder(tmp_path):
    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "a").write_bytes(b"x")
    (tmp_path / "stray").write_bytes(b"x")
    discard(tmp_path / "entry")
    discard(tmp_path / "stray")
    assert _siblings(tmp_path) == []


def test_write_file_locally_and_on_object_storage(tmp_path):
    write_file(tmp_path / "new" / "config.yaml", b"a: 1\n")
    assert (tmp_path / "new" / "config.yaml").read_bytes() == b"a: 1\n" and _siblings(tmp_path / "new") == [
        "config.yaml"
    ]
    write_file("memory://storage-test/config.yaml", b"b: 2\n")
    assert fsspec.filesystem("memory").cat_file("/storage-test/config.yaml") == b"b: 2\n"


def test_a_second_holder_waits_for_the_first(tmp_path):
    lock, order, held = tmp_path / "entry.lock", [], threading.Event()
    release = threading.Event()

    def first():
        with waiting(lock):
            order.append("first in")
            held.set()
            release.wait(10)
            order.append("first out")

    def second():
        held.wait(10)
        with waiting(lock):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    held.wait(10)
    threads[1].join(0.2)
    assert threads[1].is_alive() and order == ["first in"]  # the second is still waiting
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first in", "first out", "second in"]


def test_a_file_in_the_way_is_replaced_by_the_folder(tmp_path):
    (tmp_path / "export").write_bytes(b"an old file")
    with atomic_folder(tmp_path / "export") as tmp:
        (tmp / "README.md").write_text("model card")
    assert (tmp_path / "export" / "README.md").read_text() == "model card" and _siblings(tmp_path) == ["export"]
