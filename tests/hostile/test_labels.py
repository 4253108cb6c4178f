"""Labels and templates as careless or hostile users write them: encodings, line endings, format fields, 50k entries.

Each way in (the CLI, serve.yaml, the Python API) goes through `pictag.prompts`, so each gets the same answer: the
labels, or one line naming the file and the fix, exit 2 on the command line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from pictag.cli.main import main
from pictag.errors import PictagError
from pictag.prompts import load_templates, parse_labels
from pictag.serve.config import ServeConfig

# (file bytes, the words of the one-line error, or the labels it holds)
LABEL_FILES = {
    "utf8": (b"cat\ndog\n", ["cat", "dog"]),
    "bom and crlf": (b"\xef\xbb\xbfcat\r\ndog\r\n", ["cat", "dog"]),
    "old mac cr": (b"cat\rdog\r", ["cat", "dog"]),
    "mixed endings, blanks, comments": (b"# animals\r\ncat  \n\n\tdog # a pet\r\n", ["cat", "dog"]),
    "non-ascii": ("café\nnaïve\n東京\n".encode(), ["café", "naïve", "東京"]),
    "bom hiding a duplicate": (b"\xef\xbb\xbfcat\r\ndog\r\ncat\r\n", "appear more than once: cat"),
    "latin-1": ("cat\ncafé\n".encode("latin-1"), "not UTF-8 (byte 0xe9 at offset 7)"),
    "utf-16": ("cat\ndog\n".encode("utf-16"), "is UTF-16: save it as UTF-8"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    "high bytes": (bytes(range(0x80, 0x100)), "not UTF-8"),
    "empty": (b"", "label list is empty"),
    "only comments": (b"# nothing\n  # here\n", "label list is empty"),
    "reserved label": (b"cat\nunknown\n", "reserved"),
}


def cli_error(capsys, *args: str) -> str:
    """Run the CLI in-process; it must fail with exit 2 and one line on stderr, which is returned."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", LABEL_FILES)
def test_labels_files_of_every_encoding(tmp_path, photo_dir, capsys, name):
    data, expected = LABEL_FILES[name]
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    if isinstance(expected, list):
        assert parse_labels(labels_file=path) == expected
        return
    with pytest.raises(PictagError, match=None) as error:
        parse_labels(labels_file=path)
    assert expected in str(error.value) and "\n" not in str(error.value)
    out = tmp_path / "out.csv"
    assert expected in cli_error(capsys, "classify", str(photo_dir), "--labels-file", str(path), "--out", str(out))
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_labels_files_that_cannot_be_read(tmp_path, photo_dir, capsys, kind):
    path = tmp_path / "labels.txt"
    if kind == "directory":
        path.mkdir()
    words = {"missing": "does not exist", "directory": "is a directory"}[kind]
    out = tmp_path / "out.csv"
    assert words in cli_error(capsys, "classify", str(photo_dir), "--labels-file", str(path), "--out", str(out))


def as_nobody(function, *args) -> str:
    """`function(*args)`'s PictagError message, or "" when it passed, as an unprivileged user (root reads anything)."""
    if os.geteuid() != 0:
        try:
            function(*args)
            return ""
        except PictagError as exc:
            return str(exc)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        message = ""
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            function(*args)
        except PictagError as exc:
            message = str(exc)
        except BaseException as exc:
            message = f"not a PictagError: {exc!r}"
        finally:
            os.write(write, message.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


def test_an_unreadable_labels_or_templates_file_is_one_line():
    folder = Path(tempfile.mkdtemp(prefix="pictag-hostile-"))  # pytest's tmp_path is not crossable by others
    try:
        folder.chmod(0o755)
        path = folder / "labels.txt"
        path.write_text("cat {}\ndog {}\n")
        path.chmod(0)
        for function, args in ((parse_labels, (None, path)), (load_templates, (str(path),))):
            message = as_nobody(function, *args)
            assert message.startswith("cannot read") and "Permission denied" in message and "\n" not in message
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\xef\xbb\xbfa photo of a {}.\r\na drawing of a {}.\r\n", None),
        ("une photo d'un {}.\n".encode("latin-1") + b"\xe9", "not UTF-8"),
        (b"a photo of a {x} {}.\n", "{x}"),
        (b"{0.__class__}\n", "{0.__class__}"),
        (b"{1}\n", "{1}"),
        (b"a {} and a {}\n", "exactly one {}"),
        (b"no field at all\n", "exactly one {}"),
        (b"a { unmatched {}\n", "literal braces"),
        (b"# only a comment\n", "no templates"),
    ],
)
def test_templates_files(tmp_path, photo_dir, capsys, data, words):
    path = tmp_path / "templates.txt"
    path.write_bytes(data)
    if words is None:
        assert load_templates(str(path)) == ["a photo of a {}.", "a drawing of a {}."]
        return
    out = tmp_path / "out.csv"
    err = cli_error(
        capsys, "classify", str(photo_dir), "--labels", "cat,dog", "--templates", str(path), "--out", str(out)
    )
    assert words in err


@pytest.mark.parametrize("templates", [["a {x} {}"], ["{0.__class__}"], ["{1}"], [1, 2], [{"a": 1}], []])
def test_serve_config_refuses_bad_templates_where_it_is_read(tmp_path, capsys, templates):
    with pytest.raises(PictagError):
        ServeConfig(model="none", templates=templates)
    config = tmp_path / "serve.yaml"
    config.write_text(f"templates: {templates!r}\n")
    assert cli_error(capsys, "serve", "--config", str(config), "--port", "1")


def test_50k_labels_parse_in_linear_time(tmp_path, photo_dir, capsys):
    """The duplicate check was list.count per label: 50k labels took 35 s. Quadratic would take minutes here."""
    labels = [f"class {i:05d}" for i in range(50_000)]
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(labels) + "\n")
    started = time.perf_counter()
    assert parse_labels(labels_file=path) == labels
    assert parse_labels(",".join(labels)) == labels
    path.write_text("\n".join(labels + ["class 00007"]) + "\n")
    out = tmp_path / "out.csv"
    err = cli_error(capsys, "classify", str(photo_dir), "--labels-file", str(path), "--out", str(out))
    assert "appear more than once: class 00007" in err
    assert time.perf_counter() - started < 10


def test_the_label_limit_comes_before_the_duplicate_check():
    with pytest.raises(PictagError, match="max_labels"):
        parse_labels(["same"] * 100_000, max_labels=1000)
    with pytest.raises(PictagError, match="max_labels"):
        parse_labels("a," * 5000, max_labels=1000)
    assert len(parse_labels(",".join(f"l{i}" for i in range(1000)) + ",,,", max_labels=1000)) == 1000
