"""Labelled sources: the one place that reads what a source says about its images besides their bytes.

Two layouts carry labels, and ``open_source(uri, labelled=True)`` reads both over every kind of storage:

- a folder of classes, ``<class>/*.jpg``: an image's label is the first folder of its path inside the folder,
  tar or tar shards, local or behind a URL (``cat/x.jpg`` and ``cat/2021/y.jpg`` are both cats);
- a table (CSV or Parquet) with a column of image paths, a column of labels and optionally one of texts; its
  other columns become each record's ``meta``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pictag.errors import PictagError

if TYPE_CHECKING:
    import pyarrow as pa


class Annotation(NamedTuple):
    """What a labelled source says about one image: the ``Record`` fields of the same names."""

    label: str
    text: str | None = None
    meta: Mapping[str, Any] = {}  # one empty dict shared by every annotation: safe, since meta is read-only


def class_folders(where: str, paths: Sequence[str], folders: Iterable[str] = ()) -> list[Annotation]:
    """Annotate the images of a folder of classes: each is labelled by the first folder of its path.

    Args:
        where: The folder, tar or pattern that holds the images, for messages.
        paths: Image paths inside it, e.g. ``cat/x.jpg``.
        folders: Names of the folders directly inside it, where the storage can list them, so that a class
            folder without images is reported instead of silently missing from the classes.

    Returns:
        One annotation per path; the images of one class share one, which keeps shards small.

    Raises:
        PictagError: An image outside any class folder, or a class folder without images.
    """
    # `tar -cf data.tar -C data .` names its members ./cat/x.jpg
    parts = [path.removeprefix("./").split("/", 1) for path in paths]
    loose = [path for path, part in zip(paths, parts, strict=True) if len(part) == 1]
    if loose:
        raise PictagError(
            f"{where} is read as a folder of classes (<class>/*.jpg), but {len(loose)} image(s) lie outside any "
            f"class folder (e.g. {loose[0]}): move each into the folder of its class, or remove it"
        )
    labels = [part[0] for part in parts]
    empty = sorted(set(folders) - set(labels))
    if empty:
        raise PictagError(f"{where} has empty class folder(s) {', '.join(map(repr, empty))}: add images or remove them")
    shared = {label: Annotation(label) for label in set(labels)}
    return [shared[label] for label in labels]


def table_paths(table: pa.Table, where: str, column: str) -> list[str]:
    """The image paths of a table, checked: a column of text, filled in every row, no path twice.

    Raises:
        PictagError: The column is missing or not text, a row has no path, or a path is listed twice.
    """
    import pyarrow as pa

    _require(table, column, where, "name the column of image paths with path_column")
    if not pa.types.is_string(table[column].type) and not pa.types.is_large_string(table[column].type):
        raise PictagError(f"column {column!r} of {where} holds {table[column].type}, not paths: pick the path column")
    paths = _filled(table[column].to_pylist(), column, where)
    if len(set(paths)) != len(paths):
        twice = next(path for path, count in Counter(paths).items() if count > 1)
        raise PictagError(f"{where} lists {twice} twice: drop the duplicate rows, keys must be unique")
    return paths


def table_annotations(
    table: pa.Table, where: str, *, path_column: str, label_column: str, text_column: str | None = None
) -> list[Annotation]:
    """Annotate the rows of a table: a label from one column, a text from another, the other columns as meta.

    Args:
        table: The table, one row per image.
        where: The table's URI, for messages.
        path_column: The column of image paths, left out of meta.
        label_column: The column of labels; labels are text (a column of numbers gives "0", "1", ...).
        text_column: The column of texts; None takes ``text`` where the table has one, else no text.

    Raises:
        PictagError: A named column is missing, or a row has no label.
    """
    import pyarrow as pa

    _require(table, label_column, where, "name the column of labels with label_column")
    labels = _filled(table[label_column].cast(pa.string()).to_pylist(), label_column, where)
    if text_column is None:
        text_column = "text" if "text" in table.column_names else None
    else:
        _require(table, text_column, where, "name the column of texts with text_column")
    texts = [None] * len(labels)
    if text_column:
        # A blank CSV cell reads as "" and a Parquet one as null: both mean no text.
        texts = [text or None for text in table[text_column].cast(pa.string()).to_pylist()]
    metas = table.drop_columns([c for c in {path_column, label_column, text_column} if c]).to_pylist()
    return [Annotation(*row) for row in zip(labels, texts, metas, strict=True)]


def _require(table: pa.Table, column: str, where: str, fix: str) -> None:
    if column not in table.column_names:
        raise PictagError(f"{where} has no column {column!r} (it has {', '.join(table.column_names)}): {fix}")


def _filled(values: list, column: str, where: str) -> list:
    empty = next((row for row, value in enumerate(values, 1) if not value), None)
    if empty is not None:
        raise PictagError(f"row {empty} of {where} has no {column!r}: fill it in or drop the row")
    return values
