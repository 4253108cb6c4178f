"""K-fold cross-validation of a task that cross-validates (`Task.cross_validates`, e.g. fusion).

    RUN/fold<i>/        a whole run per fold: last.ckpt (each fold resumes on its own), best/, metrics.csv, oof.csv
    RUN/oof.csv         out-of-fold predictions of every row: id, label, prediction, score, fold
    RUN/cv.json         top1_mean, top1_std, top3_mean, top3_std, folds (and the --ablate heads' top-1, and the
                        products without an image: missing_images)
    RUN/per_class.csv   precision and recall of each class over the out-of-fold predictions
    RUN/confusion.png   their confusion matrix

`--fold i` trains fold i alone, so folds can run on several machines into the same RUN (a shared folder); the
summary is written by whichever run finds every fold's oof.csv in place. Stage 2 (`--init-from RUN_S1`) starts
each fold from RUN_S1/fold<i>/, the best model of the same fold.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pictag.config import dump_config
from pictag.errors import PictagError
from pictag.storage.files import atomic_file, write_file

OOF = "oof.csv"
CV = "cv.json"
OOF_COLUMNS = ("id", "label", "prediction", "score", "fold")


@dataclass
class CVResult:
    """What a cross-validated run left in its folder."""

    out: Path
    folds: list[str]
    trained: list = field(default_factory=list)  # the TrainResult of each fold trained by this call
    cv: dict | None = None  # cv.json, once every fold is done

    def summary(self) -> str:
        lines = [r.summary() for r in self.trained if r.summary()]
        if self.cv is None:
            done = ", ".join(str(r.out.name) for r in self.trained)
            lines.append(f"trained {done}; {self.out / CV} comes once every fold of {', '.join(self.folds)} is done")
        else:
            lines.append(cv_line(self.cv, self.out))
        return "\n".join(lines)


def cv_line(cv: dict, out: Path) -> str:
    """The CV score in words."""
    words = f"CV top-1 {cv['top1_mean']:.4f} ± {cv['top1_std']:.4f}, top-3 {cv['top3_mean']:.4f} ± {cv['top3_std']:.4f}"
    for name in ("image", "text"):
        if f"{name}_top1_mean" in cv:
            words += f"; {name}-only top-1 {cv[f'{name}_top1_mean']:.4f} ± {cv[f'{name}_top1_std']:.4f}"
    return f"{words} over {len(cv['folds'])} folds -> {out / CV}, {out / OOF}"


def fold_folder(out: str | os.PathLike, fold: str) -> Path:
    return Path(out) / f"fold{fold}"


def fold_init(init_from: str | None, fold: str) -> str | None:
    """What fold `fold` starts from: the same fold of a cross-validated run, or the one run given."""
    if init_from is None:
        return None
    folder = fold_folder(init_from, fold)
    if folder.is_dir():
        return str(folder)
    if any(Path(init_from).glob("fold*/")):
        raise PictagError(f"--init-from {init_from} has no fold{fold}/: give a run trained with the same folds")
    return init_from


def run_folds(cfg, folds: list[str], train: Callable):
    """Train the folds `cfg` asks for (all of `folds`, or `cfg.fold`) with `train(fold_cfg)`, then summarise.

    Raises:
        PictagError: `--fold` names a fold that is not one of `folds`.
    """
    chosen = folds if cfg.fold is None else [str(cfg.fold)]
    if chosen[0] not in folds:
        raise PictagError(f"--fold {cfg.fold}: the folds are {', '.join(folds)}")
    out = Path(cfg.out)
    result = CVResult(out, folds)
    for fold in chosen:
        fold_cfg = dataclasses.replace(
            cfg, fold=fold, out=str(fold_folder(out, fold)), init_from=fold_init(cfg.init_from, fold)
        )
        result.trained.append(train(fold_cfg))
        if len(result.trained) == 1:
            # Written once the first fold has trained (each fold's folder has its own from its start): input that
            # fold refuses leaves no folder behind.
            dump_config(cfg, out / "config.yaml")
    if all((fold_folder(out, f) / OOF).is_file() for f in folds):
        result.cv = summarize(out, folds)
    return result


def summarize(out: Path, folds: list[str]) -> dict:
    """Write RUN/oof.csv, cv.json, per_class.csv and confusion.png from the folds' own; returns cv.json's content."""
    import numpy as np
    import torch

    from pictag.eval.metrics import confusion_matrix, write_per_class
    from pictag.eval.plots import plot_confusion
    from pictag.models.run_dir import read_meta

    rows, per_fold = [], []
    for fold in folds:
        with open(fold_folder(out, fold) / OOF, newline="") as f:
            rows += list(csv.DictReader(f))
        metrics = read_meta(fold_folder(out, fold)).get("metrics", {})
        per_fold.append({"fold": fold, **{k: v for k, v in metrics.items() if k.startswith(("val_", "epoch"))}})
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise PictagError(f"{out}: some rows are in the validation of two folds: the folds' runs used other splits")
    _write_csv(out / OOF, rows, OOF_COLUMNS)
    cv: dict = {}
    for name, key in (("top1", "val_top1"), ("top3", "val_top3"), ("image_top1", "val_image_top1"),
                      ("text_top1", "val_text_top1")):  # fmt: skip
        values = [m[key] for m in per_fold if key in m]
        if len(values) == len(per_fold):
            cv[f"{name}_mean"], cv[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
    facts = read_meta(fold_folder(out, folds[0])).get("metrics", {})
    if "missing_images" in facts:  # the same table and images in every fold
        cv["missing_images"] = facts["missing_images"]
    cv["folds"] = per_fold
    write_file(out / CV, (json.dumps(cv, indent=2) + "\n").encode())
    classes = read_meta(fold_folder(out, folds[0]))["classes"]
    index = {c: i for i, c in enumerate(classes)}
    predicted = torch.tensor([index[r["prediction"]] for r in rows])
    labels = torch.tensor([index[r["label"]] for r in rows])
    confusion = confusion_matrix(predicted, labels, len(classes))
    write_per_class(confusion, classes, out / "per_class.csv")
    plot_confusion(confusion.numpy(), classes, out / "confusion.png", f"out of fold, {len(folds)} folds")
    return cv


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    with atomic_file(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def write_oof(path: Path, ids, labels, predictions, scores, fold: str) -> None:
    """A fold's out-of-fold predictions (class names and the predicted class's probability)."""
    rows = [
        {"id": i, "label": label, "prediction": p, "score": f"{s:.6f}", "fold": fold}
        for i, label, p, s in zip(ids, labels, predictions, scores, strict=True)
    ]
    _write_csv(path, rows, OOF_COLUMNS)
