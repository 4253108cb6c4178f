"""Few-shot tasks on disk, and episodes sampled from a labelled collection.

A task folder holds ``support/<class>/*.jpg`` (labelled) and ``query/*.jpg`` (unlabelled); any folder below the
test folder that has both is a task, named by its path relative to the test folder (``setA/task003``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pictag.data._io import is_image
from pictag.data.labelled import class_folders
from pictag.errors import PictagError

SUPPORT, QUERY = "support", "query"


@dataclass(frozen=True)
class Task:
    """One few-shot task found on disk.

    Attributes:
        name: Path of the task folder relative to the test folder ("." when the test folder is the task).
        classes: Class names, from the support sub-folders, sorted.
        support: (key, class index) of every support image; keys are relative to the test folder.
        query: Keys of the query images, relative to the test folder.
    """

    name: str
    classes: tuple[str, ...]
    support: tuple[tuple[str, int], ...]
    query: tuple[str, ...]

    def query_name(self, key: str) -> str:
        """The image column of a result row: the query image's path below the task's query folder."""
        prefix = "" if self.name == "." else self.name + "/"
        return key[len(prefix) + len(QUERY) + 1 :]


def find_tasks(test_dir: str | os.PathLike) -> list[Task]:
    """Every task below `test_dir` (which may itself be a task), in path order.

    Raises:
        PictagError: no task found, a task with fewer than two classes, or a support class without images.
    """
    root = Path(test_dir)
    if not root.is_dir():
        raise PictagError(f"{test_dir} is not a folder: give a folder of tasks, each with support/<class>/ and query/")
    tasks = []
    for folder, dirs, _ in os.walk(root, followlinks=True):
        dirs.sort()
        if SUPPORT in dirs and QUERY in dirs:
            tasks.append(_read_task(root, Path(folder)))
            dirs.clear()  # a task's own folders hold no further tasks
    if not tasks:
        raise PictagError(
            f"{test_dir} holds no task: a task is a folder with support/<class>/*.jpg and query/*.jpg "
            "(e.g. TEST_DIR/set1/task001/support/cat/1.jpg)"
        )
    return tasks


def _read_task(root: Path, folder: Path) -> Task:
    name = folder.relative_to(root).as_posix()
    prefix = "" if name == "." else name + "/"
    images = _images(folder / SUPPORT)
    folders = [p.name for p in (folder / SUPPORT).iterdir() if p.is_dir()]
    labels = [annotation.label for annotation in class_folders(str(folder / SUPPORT), images, folders)]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise PictagError(
            f"task {name}: support/ has {len(classes)} class folder(s), a task needs at least two "
            "(support/<class>/*.jpg)"
        )
    index = {cls: i for i, cls in enumerate(classes)}
    support = tuple((f"{prefix}{SUPPORT}/{image}", index[label]) for image, label in zip(images, labels, strict=True))
    query = tuple(f"{prefix}{QUERY}/{image}" for image in _images(folder / QUERY))
    return Task(name, tuple(classes), support, query)


def _images(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and is_image(p.name))


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot problem drawn from a labelled collection.

    Attributes:
        classes: The collection's class indices taken, in the order that defines the episode's labels 0..N-1.
        support: Indices into the collection of the support examples.
        support_labels: Episode labels (0..N-1) of the support examples.
        query: Indices into the collection of the query examples.
        query_labels: Episode labels of the query examples.
    """

    classes: tuple[int, ...]
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def sample_episodes(
    labels: Sequence[int], ways: int, shots: int, episodes: int, queries: int = 15, seed: int = 0
) -> list[Episode]:
    """Draw episodes: `ways` classes, `shots` support and up to `queries` query examples per class, disjoint.

    The same (labels, ways, shots, episodes, queries, seed) always give the same episodes, so every method is
    evaluated on identical problems.

    Raises:
        PictagError: fewer than `ways` classes have `shots` + 1 examples.
    """
    labels = np.asarray(labels)
    if ways < 2 or shots < 1 or episodes < 1 or queries < 1:
        raise PictagError(
            f"need ways >= 2, shots >= 1, episodes >= 1, queries >= 1 (got {ways}, {shots}, {episodes}, {queries})"
        )
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = sorted(c for c, members in by_class.items() if len(members) > shots)
    if len(eligible) < ways:
        raise PictagError(
            f"{ways}-way {shots}-shot episodes need {ways} classes with at least {shots + 1} images; "
            f"only {len(eligible)} have that many: lower --ways or --shots"
        )
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(episodes):
        classes = rng.choice(eligible, size=ways, replace=False)
        support, query, support_labels, query_labels = [], [], [], []
        for label, c in enumerate(classes):
            members = rng.permutation(by_class[c])
            take = min(queries, len(members) - shots)
            support.append(members[:shots])
            query.append(members[shots : shots + take])
            support_labels.append(np.full(shots, label))
            query_labels.append(np.full(take, label))
        drawn.append(
            Episode(
                tuple(int(c) for c in classes),
                np.concatenate(support),
                np.concatenate(support_labels),
                np.concatenate(query),
                np.concatenate(query_labels),
            )
        )
    return drawn
