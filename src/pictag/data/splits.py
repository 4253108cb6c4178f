"""Splits of a labelled set, shared by every task, seeded so that a rerun gets the same images.

Inside one training set: stratified hold-out, stratified K-fold, or a fold column the user assigned, as positions
into the set. scikit-learn does the stratifying; this module adds the checks that turn its exceptions into messages
that say what to do.

Across train/val/test, grouped by ID (`pictag splits`): every image of one physical object, its ID, goes to one
split, so that no object leaks from training into evaluation.

- `id_split(classes, ids, ratios, seed)` puts whole IDs of each class into splits, meeting the ratios per class as
  far as whole IDs allow; a class with a single ID goes to train.
- `class_split(classes, ratios, seed)` puts whole classes into splits: the open-set protocol of metric-learning
  benchmarks, where the evaluated classes are never trained on.
- `read_splits(path, root=None) -> SplitTable` reads the CSV that `pictag splits` writes: columns
  ``path,class,id,split``, one row per image. Its paths are relative to the CSV's own folder (or absolute), as in
  every pictag table, so the file is also a labelled source (``label_column="class"``). `SplitTable.select("test")`
  or `select(["train", "val"])` keeps the rows of those splits; `SplitTable.keys(root)` gives the paths relative to
  the data folder, as the keys of ``open_source(root)`` are.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pictag.data._io import is_url, join, read_file, safe_key
from pictag.errors import PictagError
from pictag.storage.files import atomic_file


def stratified_split(
    labels: Sequence, fraction: float, seed: int = 0, classes: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """(train, val) positions with about `fraction` of each class held out for validation; `classes` names the
    labels that index them, in messages.

    Raises:
        PictagError: a fraction outside (0, 1), or a class too small to appear on both sides.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise PictagError(f"--val-split must be between 0 and 1 (exclusive), not {fraction}")
    _check_counts(labels, 2, "--val-split", classes)
    positions = np.arange(len(labels))
    classes = len(set(labels))
    # Every class needs a place on each side: at least one image per class in val, and one in train.
    val_size = min(max(round(fraction * len(labels)), classes), len(labels) - classes)
    train, val = train_test_split(positions, test_size=val_size, stratify=list(labels), random_state=seed)
    return sorted(train.tolist()), sorted(val.tolist())


def kfold_split(
    labels: Sequence, folds: int, fold: int, seed: int = 0, classes: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """(train, val) positions of fold `fold` (0-based) of a stratified, shuffled K-fold split (`classes` as in
    `stratified_split`).

    Raises:
        PictagError: fewer than 2 folds, a fold out of range, or a class with fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2 or not 0 <= fold < folds:
        raise PictagError(f"--folds {folds} --fold {fold}: need at least 2 folds and 0 <= fold < folds")
    _check_counts(labels, folds, f"--folds {folds}", classes)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(np.zeros(len(labels)), list(labels)))[fold]
    return sorted(train.tolist()), sorted(val.tolist())


def column_split(values: Sequence, fold) -> tuple[list[int], list[int]]:
    """(train, val) positions from a user's fold column: the rows whose value equals `fold` validate.

    Raises:
        PictagError: no row, or every row, is in that fold.
    """
    val = [i for i, v in enumerate(values) if str(v) == str(fold)]
    if not val or len(val) == len(values):
        found = ", ".join(sorted({str(v) for v in values}))
        raise PictagError(f"--fold {fold}: the fold column must leave rows on both sides (its values: {found})")
    chosen = set(val)
    return [i for i in range(len(values)) if i not in chosen], val


def _check_counts(labels: Sequence, least: int, option: str, classes: Sequence[str] | None = None) -> None:
    small = sorted((n, label) for label, n in Counter(labels).items() if n < least)
    if small:
        name = (lambda label: classes[label]) if classes is not None else str
        shown = ", ".join(f"{name(label)} ({n})" for n, label in small[:5]) + (" ..." if len(small) > 5 else "")
        raise PictagError(
            f"{option} needs at least {least} images per class; {len(small)} class(es) have fewer ({shown}): "
            "add images, or give validation data with --val"
        )


SPLIT_NAMES = ("train", "val", "test")
SPLITS_COLUMNS = ("path", "class", "id", "split")


def parse_ratios(text: str | Sequence[float]) -> tuple[float, ...]:
    """The train[,val[,test]] fractions of "0.7,0.15,0.15" (or a list), checked to sum to 1.

    Raises:
        PictagError: not numbers, more than three, a negative one, no train, or a sum other than 1.
    """
    try:
        ratios = tuple(float(x) for x in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise PictagError(f"--ratios {text}: give train,val,test fractions such as 0.7,0.15,0.15") from None
    if not 1 <= len(ratios) <= len(SPLIT_NAMES) or not all(0 <= r <= 1 for r in ratios) or ratios[0] <= 0:
        raise PictagError(f"--ratios {text}: give up to three fractions 0 to 1 (train,val,test), train above 0")
    if abs(sum(ratios) - 1) > 1e-6:
        raise PictagError(f"--ratios {text} sum to {sum(ratios):.4g}, not 1: adjust them, e.g. 0.7,0.15,0.15")
    return ratios


def id_split(
    classes: Sequence[str], ids: Sequence[str], ratios: Sequence[float], seed: int = 0
) -> tuple[list[str], list[str]]:
    """The split name of each image, with the images of one ID always in one split.

    Within each class the IDs are shuffled (seeded by the seed and the class name, so that adding a class moves no
    other class's images), then each goes to the split furthest below its share of the class's images.

    Returns:
        (split of each image, the classes that had a single ID and went to train whole).

    Raises:
        PictagError: an ID in two classes.
    """
    check_ids(classes, ids)
    members: dict[str, Counter] = defaultdict(Counter)
    for label, group in zip(classes, ids, strict=True):
        members[label][group] += 1
    chosen: dict[str, str] = {}
    single = sorted(label for label, groups in members.items() if len(groups) == 1)
    for label, groups in members.items():
        chosen.update(_deal(list(groups), list(groups.values()), ratios, _seed(seed, label)))
    return [chosen[group] for group in ids], single


def check_ids(classes: Sequence[str], ids: Sequence[str]) -> None:
    """Refuse an ID in two classes: one object has one class, and an ID split across classes leaks.

    Raises:
        PictagError: naming the first such ID and its two classes.
    """
    owner: dict[str, str] = {}
    for label, group in zip(classes, ids, strict=True):
        if owner.setdefault(group, label) != label:
            raise PictagError(
                f"ID {group!r} is in class folders {owner[group]!r} and {label!r}: one object must have one class; "
                "rename the files or fix --id-pattern"
            )


def class_split(classes: Sequence[str], ratios: Sequence[float], seed: int = 0) -> list[str]:
    """The split name of each image, with whole classes in one split each (open-set evaluation).

    Classes are shuffled (seeded), then each goes to the split furthest below its share of all the images.
    """
    counts = Counter(classes)
    labels = sorted(counts)
    chosen = _deal(labels, [counts[label] for label in labels], ratios, seed)
    return [chosen[label] for label in classes]


def _deal(groups: list[str], sizes: list[int], ratios: Sequence[float], seed: int) -> dict[str, str]:
    """Shuffle the groups, then give each to the split whose image count lies furthest below its target."""
    order = np.random.default_rng(seed).permutation(len(groups))
    targets = np.array(ratios) * sum(sizes)
    filled = np.zeros(len(ratios))
    chosen = {}
    for i in order:
        # Ties go to the earlier split (train), so a first group never lands in an empty test split.
        split = int(np.argmax(targets - filled))
        filled[split] += sizes[i]
        chosen[groups[i]] = SPLIT_NAMES[split]
    return chosen


def _seed(seed: int, label: str) -> list[int]:
    return [seed, zlib.crc32(label.encode())]


@dataclass(frozen=True)
class SplitTable:
    """The rows of a splits CSV, one per image, in file order.

    Attributes:
        csv: The file read, for messages.
        paths: Each image's path: as written when absolute, else joined to the CSV's folder.
        classes: Each image's class.
        ids: Each image's ID (the physical object).
        splits: Each image's split name.
        root: The data folder the paths lie in, when one was given to `read_splits`.
    """

    csv: str
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    ids: tuple[str, ...]
    splits: tuple[str, ...]
    root: str | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        """The split names present, in the order train, val, test, then any others."""
        present = set(self.splits)
        return [n for n in SPLIT_NAMES if n in present] + sorted(present - set(SPLIT_NAMES))

    def select(self, names: str | Sequence[str]) -> SplitTable:
        """The rows of the named splits ("test", "train,val" or a list).

        Raises:
            PictagError: a named split has no rows.
        """
        wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        empty = [n for n in wanted if n not in self.splits]
        if empty:
            raise PictagError(
                f"split {empty[0]!r} of {self.csv} is empty (it has {', '.join(self.names) or 'no rows'}): "
                "pick another split, or give that split a share with pictag splits --ratios"
            )
        keep = [i for i, split in enumerate(self.splits) if split in wanted]
        return replace(
            self, **{f: tuple(getattr(self, f)[i] for i in keep) for f in ("paths", "classes", "ids", "splits")}
        )

    def keys(self) -> list[str]:
        """Each path relative to the data folder given to `read_splits`: the key ``open_source(root)`` gives it."""
        if self.root is None:
            raise PictagError(
                f"the keys of {self.csv} are relative to a data folder: read it with read_splits(path, root)"
            )
        base = os.path.abspath(self.root)
        return [os.path.relpath(os.path.abspath(path), base).replace(os.sep, "/") for path in self.paths]


def read_splits(path: str | os.PathLike, root: str | os.PathLike | None = None) -> SplitTable:
    """Read the CSV that `pictag splits` writes (columns path, class, id, split).

    Args:
        path: The CSV.
        root: The data folder that was split; every image must lie inside it, and `SplitTable.keys()` gives
            the paths relative to it.

    Raises:
        PictagError: the file is missing, lacks a column, has a row with an empty cell, or lists an image
            outside `root`.
    """
    where = os.fspath(path)
    if not os.path.lexists(where):
        raise PictagError(f"{where} does not exist: write it with pictag splits DATA --out {where}")
    try:
        lines = list(csv.reader(io.StringIO(read_file(where, "splits file").decode("utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PictagError(f"{where} is not a CSV that pictag splits wrote ({exc}): write it again") from None
    header = lines[0] if lines else []
    missing = [c for c in SPLITS_COLUMNS if c not in header]
    if missing:
        raise PictagError(
            f"{where} has no column {missing[0]!r} (it has {', '.join(header) or 'none'}): give the CSV that "
            "pictag splits writes (path,class,id,split)"
        )
    rows = [dict(zip(header, line, strict=False)) for line in lines[1:]]
    for n, row in enumerate(rows, 2):
        empty = next((c for c in SPLITS_COLUMNS if not row.get(c)), None)
        if empty is not None:
            raise PictagError(f"line {n} of {where} has no {empty!r}: fill it in or drop the row")
    folder = os.path.dirname(where)
    table = SplitTable(
        where,
        tuple(row["path"] if os.path.isabs(row["path"]) else os.path.join(folder, row["path"]) for row in rows),
        tuple(row["class"] for row in rows),
        tuple(row["id"] for row in rows),
        tuple(row["split"] for row in rows),
        None if root is None else os.fspath(root),
    )
    if root is not None:
        outside = next((p for p, key in zip(table.paths, table.keys(), strict=True) if key.startswith("../")), None)
        if outside is not None:
            raise PictagError(f"{where} lists {outside}, which is not inside {root}: give the data folder it splits")
    return table


# `pictag splits`: the command over a labelled source.

DEFAULT_ID_PATTERN = r"^(?P<id>.+)_[^_]+$"


@dataclass
class SplitsResult:
    """What `pictag splits` wrote: the CSV, and per class its IDs and the images of each split."""

    csv: str
    config: str
    by: str
    per_class: dict[str, dict[str, int]]
    reports: list[str]

    def summary(self) -> str:
        names = list(SPLIT_NAMES)
        width = max([len(c) for c in self.per_class] + [5])
        lines = [f"{'class':<{width}}  {'ids':>5}  " + "  ".join(f"{n:>6}" for n in names)]
        for label, row in self.per_class.items():
            lines.append(f"{label:<{width}}  {row['ids']:>5}  " + "  ".join(f"{row[n]:>6}" for n in names))
        totals = {k: sum(row[k] for row in self.per_class.values()) for k in ["ids", *names]}
        lines.append(f"{'total':<{width}}  {totals['ids']:>5}  " + "  ".join(f"{totals[n]:>6}" for n in names))
        lines += self.reports
        lines.append(f"splits: {self.csv} (grouped by {self.by}; config: {self.config})")
        return "\n".join(lines)


def write_splits(data: str, out: str, **options) -> SplitsResult:
    """Split the images of `data` into train/val/test by ID (or by class) and write the CSV `out`; the Python twin
    of `pictag splits`: options are the SplitsConfig fields (ratios=, id_pattern=, by=, ...).

    Raises:
        PictagError: bad options, a source that is not image files, an ID in two classes, a class name that is
            not in the data, or no image left to split.
    """
    import re

    from pictag.config import dump_config, load_config, sibling
    from pictag.data.options import SplitsConfig
    from pictag.data.sources import FileShard, open_source

    cfg = load_config(SplitsConfig, data=data, out=out, **options)
    ratios = parse_ratios(cfg.ratios)
    try:
        pattern = re.compile(cfg.id_pattern or DEFAULT_ID_PATTERN)
    except re.error as e:
        raise PictagError(f"--id-pattern {cfg.id_pattern!r} is not a regular expression ({e})") from None
    if "id" not in pattern.groupindex:
        raise PictagError(f"--id-pattern {cfg.id_pattern!r} needs a group named id, e.g. '^(?P<id>[^_]+)_'")
    out = os.path.abspath(cfg.out)
    if os.path.isdir(out):
        raise PictagError(
            f"--out {cfg.out} is a folder: name the CSV to write, e.g. {os.path.join(cfg.out, 'splits.csv')}"
        )
    if os.path.exists(out) and not cfg.overwrite:
        raise PictagError(f"{cfg.out} exists: pass --overwrite to replace it")
    if is_url(cfg.data):
        raise PictagError(f"{cfg.data}: pictag splits reads local image files; copy them to a local folder first")
    source = open_source(cfg.data, labelled=True, label_column=cfg.label_column)
    paths, labels = [], []
    for shard in source.shards():
        if not isinstance(shard, FileShard):
            raise PictagError(f"{cfg.data} holds images in a tar: splits name image files; extract it to a folder")
        paths += [os.path.abspath(join(shard.root, key)) for key in shard.keys]
        labels += [a.label for a in shard.annotations]
    reports: list[str] = []
    # The CSV is UTF-8 text and names each file by its path: a path that is not UTF-8 cannot be written in it.
    text = [_is_text(p) for p in paths]
    if not all(text):
        shown = safe_key(os.path.relpath(paths[text.index(False)], cfg.data))
        reports.append(f"{text.count(False)} image(s) whose path is not UTF-8 left out (e.g. {shown}): rename them")
        paths, labels = _where(text, paths, labels)
    if cfg.classes:
        keep = _chosen_classes(cfg.classes, source.classes)
        paths, labels = _where([label in keep for label in labels], paths, labels)
    matches = [pattern.search(os.path.splitext(os.path.basename(p))[0]) for p in paths]
    unmatched = [p for p, m in zip(paths, matches, strict=True) if m is None]
    if unmatched:
        if len(unmatched) == len(paths):
            raise PictagError(
                f"no file name of {cfg.data} matches the ID pattern {pattern.pattern!r} (e.g. "
                f"{os.path.basename(unmatched[0])}): name files {{ID}}_{{seq}}.jpg or give --id-pattern"
            )
        reports.append(
            f"{len(unmatched)} image(s) whose name does not match the ID pattern {pattern.pattern!r} left out "
            f"(e.g. {os.path.relpath(unmatched[0])})"
        )
    ids = [f"{m.group('id')}" if m else "" for m in matches]
    paths, labels, ids = _where([m is not None for m in matches], paths, labels, ids)
    check_ids(labels, ids)
    if cfg.min_size:
        small = _small_ids(paths, ids, cfg.min_size)
        if small:
            images = sum(group in small for group in ids)
            shown = ", ".join(sorted(small)[:5]) + (" ..." if len(small) > 5 else "")
            reports.append(
                f"{len(small)} ID(s) ({images} images) with an image below --min-size {cfg.min_size} px or "
                f"unreadable left out: {shown}"
            )
            paths, labels, ids = _where([group not in small for group in ids], paths, labels, ids)
    if not paths:
        raise PictagError(f"no image of {cfg.data} is left to split: check --classes, --id-pattern and --min-size")
    if cfg.by == "class":
        splits = class_split(labels, ratios, cfg.seed)
    else:
        splits, single = id_split(labels, ids, ratios, cfg.seed)
        if single:
            shown = ", ".join(single[:5]) + (" ..." if len(single) > 5 else "")
            reports.append(f"{len(single)} class(es) with a single ID went to train whole: {shown}")
    empty = [name for name, ratio in zip(SPLIT_NAMES, ratios, strict=False) if ratio and name not in splits]
    if empty:
        reports.append(f"split(s) {', '.join(empty)} got no image: too few IDs (or classes) for the ratios")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    folder = os.path.dirname(out)
    with atomic_file(out, "w") as f:  # a CSV that train --splits reads is whole, or absent
        writer = csv.writer(f)
        writer.writerow(SPLITS_COLUMNS)
        for row in zip(paths, labels, ids, splits, strict=True):
            writer.writerow([os.path.relpath(row[0], folder).replace(os.sep, "/"), *row[1:]])
    config = dump_config(cfg, sibling(cfg.out, ".config.yaml"))
    per_class: dict[str, dict[str, int]] = {}
    for label in sorted(set(labels)):
        mine = [i for i, lab in enumerate(labels) if lab == label]
        counts = Counter(splits[i] for i in mine)
        per_class[label] = {"ids": len({ids[i] for i in mine}), **{n: counts[n] for n in SPLIT_NAMES}}
    return SplitsResult(cfg.out, str(config), cfg.by, per_class, reports)


def _chosen_classes(text: str | Sequence[str], known: Sequence[str]) -> set[str]:
    import difflib

    wanted = [c.strip() for c in text.split(",")] if isinstance(text, str) else list(text)
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else f"the classes are {', '.join(known[:10])}"
            raise PictagError(f"--classes: no class {name!r} in the data; {hint}")
    return set(wanted)


def _is_text(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _where(keep: Sequence[bool], *columns: list) -> tuple[list, ...]:
    return tuple([x for x, k in zip(column, keep, strict=True) if k] for column in columns)


def _small_ids(paths: Sequence[str], ids: Sequence[str], min_size: int) -> set[str]:
    """The IDs with an image whose shorter side is below `min_size` (or that cannot be read), from headers only."""
    from PIL import Image

    small = set()
    for path, group in zip(paths, ids, strict=True):
        if group in small:
            continue
        try:
            with Image.open(path) as img:
                short = min(img.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            short = 0
        if short < min_size:
            small.add(group)
    return small
