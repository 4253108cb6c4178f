"""Train/validation splits of a labelled set, shared by every task: stratified hold-out, stratified K-fold, or a
fold column the user assigned. Splits are positions into the set, seeded, so a rerun gets the same images.

scikit-learn does the stratifying; this module adds the checks that turn its exceptions into messages that say
what to do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from pictag.errors import PictagError


def stratified_split(labels: Sequence, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) positions with about `fraction` of each class held out for validation.

    Raises:
        PictagError: a fraction outside (0, 1), or a class too small to appear on both sides.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise PictagError(f"--val-split must be between 0 and 1 (exclusive), not {fraction}")
    _check_counts(labels, 2, "--val-split")
    positions = np.arange(len(labels))
    classes = len(set(labels))
    # Every class needs a place on each side: at least one image per class in val, and one in train.
    val_size = min(max(round(fraction * len(labels)), classes), len(labels) - classes)
    train, val = train_test_split(positions, test_size=val_size, stratify=list(labels), random_state=seed)
    return sorted(train.tolist()), sorted(val.tolist())


def kfold_split(labels: Sequence, folds: int, fold: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) positions of fold `fold` (0-based) of a stratified, shuffled K-fold split.

    Raises:
        PictagError: fewer than 2 folds, a fold out of range, or a class with fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2 or not 0 <= fold < folds:
        raise PictagError(f"--folds {folds} --fold {fold}: need at least 2 folds and 0 <= fold < folds")
    _check_counts(labels, folds, f"--folds {folds}")
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


def _check_counts(labels: Sequence, least: int, option: str) -> None:
    small = sorted(label for label, n in Counter(labels).items() if n < least)
    if small:
        shown = ", ".join(map(str, small[:5])) + (" ..." if len(small) > 5 else "")
        raise PictagError(
            f"{option} needs at least {least} images per class; {len(small)} class(es) have fewer ({shown}): "
            "add images, or give validation data with --val"
        )
