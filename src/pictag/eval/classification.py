"""How well a classifier's predictions match a labelled source: the report of `pictag evaluate --data` and of
`pictag classify --report`.

    truth = Truth.of(cfg)                    # the source's labels (no image decoded); unknown classes refused
    report = truth.report(predictions, out)  # report.json, per_class.csv, confusion.png, reliability.png, errors.png

The predictions are classify's own output (the runner's parts, resume and errors), so a report's top-1 is the
fraction of its rows whose `label` equals the image's class, as pandas would count it. The metrics come from
scikit-learn on those rows; images that could not be read are counted, not scored.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pictag.data._io import is_url
from pictag.errors import PictagError
from pictag.storage.files import atomic_file

# Equal-width confidence bins of the expected calibration error and the reliability diagram (Guo et al. 2017).
ECE_BINS = 15
WORST_ERRORS = 16
SUMMARY_FILE = "report.json"
PER_CLASS = ("class", "precision", "recall", "f1", "support")
LABEL_COLUMNS = tuple(f"label_{rank}" for rank in range(1, 6))


@dataclass
class ClassificationReport:
    """What `Truth.report` measured.

    Attributes:
        top1: Fraction of the images whose predicted label is their class.
        top5: Fraction whose class is among their 5 best labels (all of them when the model has fewer classes);
            None when the predictions hold fewer labels per image (`classify --top-k 5` writes them).
        macro_f1: F1 averaged over the classes of the data, each class weighing the same.
        balanced_accuracy: Recall averaged over the classes of the data.
        ece: Expected calibration error of the top-1 score, over 15 equal-width bins.
        images: Images scored (readable and labelled).
        classes: Classes in the data.
        model_classes: Classes the model chooses from.
        unreadable: Images of the data that could not be read (not scored).
        out: The report's folder.
    """

    top1: float
    top5: float | None
    macro_f1: float
    balanced_accuracy: float
    ece: float
    images: int
    classes: int
    model_classes: int
    unreadable: int
    out: str

    def summary(self) -> str:
        top5 = f"  top-5 {self.top5:.4f}" if self.top5 is not None else ""
        unreadable = f", {self.unreadable} unreadable" if self.unreadable else ""
        return (
            f"top-1 {self.top1:.4f}{top5}  macro-F1 {self.macro_f1:.4f}  balanced accuracy "
            f"{self.balanced_accuracy:.4f}  ECE {self.ece:.4f}\n{self.images:,} images of {self.classes} classes"
            f"{unreadable} -> {Path(self.out) / SUMMARY_FILE}"
        )


@dataclass
class Truth:
    """The class of each image of a labelled source, and how to show an image (for the grid of worst errors).

    Attributes:
        labels: Class of each key (a folder's relative path, a table's path, a product table's id).
        where: The source, for messages.
        thumbnails: Small RGB images of the keys asked for, read back from the source.
        classes: The classes the model chooses from, when known before it is loaded (see `model_classes`).
    """

    labels: dict[str, str]
    where: str
    thumbnails: Callable[[list[str]], dict]
    classes: list[str] | None = None

    @classmethod
    def of(cls, cfg, label_column: str = "label") -> Truth:
        """The labels of `cfg.source` (a classify config), checked against the classes the model chooses from.

        Raises:
            PictagError: a source without labels, or with classes the model does not know.
        """
        if not cfg.source:
            raise PictagError("a report needs labelled images: give a SOURCE of <class>/ folders or a labelled table")
        if importlib.util.find_spec("matplotlib") is None:  # checked before any work, not after it
            raise PictagError("a report draws its plots with matplotlib: pip install 'pictag[train]'")
        truth = _product_truth(cfg) if cfg.images else _source_truth(cfg, label_column)
        truth.classes = model_classes(cfg)
        truth.check()
        return truth

    def check(self) -> None:
        """Refuse classes the model cannot predict: their images would be scored as errors, silently."""
        classes = self.classes
        if classes is None:
            return
        known = set(classes)
        unknown = Counter(label for label in self.labels.values() if label not in known)
        if unknown:
            listed = ", ".join(f"{name} ({count} images)" for name, count in sorted(unknown.items())[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise PictagError(
                f"{self.where} has {len(unknown)} class(es) the model does not know: {listed}{more}; it knows "
                f"{len(classes)} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): leave those "
                "images out, or evaluate a model trained on them"
            )

    def report(self, predictions: str | os.PathLike, unreadable: int, out: str | os.PathLike) -> ClassificationReport:
        """Score `predictions` (classify's output file) and write the report into the folder `out`.

        Without the model's classes (a gallery's vote, --head pretrained), they are those the data and the
        predictions name.
        """
        from pictag.eval.plots import plot_confusion, plot_errors, plot_reliability

        if is_url(os.fspath(out)):
            raise PictagError(f"a report is written to a local folder, not {out}: give a local --out")
        predictions = _read_predictions(predictions)
        key = "key" if "key" in predictions.column_names else "id"
        if "score" not in predictions.column_names:
            raise PictagError("a report needs the predictions' scores: drop --format submission")
        keys = predictions.column(key).to_pylist()
        if not keys:
            raise PictagError(f"no image of {self.where} could be read: see the errors file")
        truth = np.array([self.labels[k] for k in keys], dtype=object)
        predicted = np.array(predictions.column("label").to_pylist(), dtype=object)
        ranked = [predictions.column(name).to_pylist() for name in LABEL_COLUMNS if name in predictions.column_names]
        confidence = predictions.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        named = {*truth, *(label for labels in ranked for label in labels)}
        classes = self.classes if self.classes is not None else sorted(named)
        data_classes = [name for name in classes if name in set(truth)]
        report, per_class = classification_metrics(truth, predicted, ranked, confidence, data_classes, len(classes))
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result = ClassificationReport(**report, unreadable=unreadable, out=str(out))
        with atomic_file(out / SUMMARY_FILE, "w") as f:
            f.write(json.dumps({**asdict(result), "source": self.where}, indent=2) + "\n")
        with atomic_file(out / "per_class.csv", "w") as f:
            writer = csv.DictWriter(f, fieldnames=list(PER_CLASS))
            writer.writeheader()
            writer.writerows(
                {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()} for row in per_class
            )
        # The model's classes in its order, then any other label predicted ("unknown" under a threshold).
        present = {*truth, *predicted}
        shown = [name for name in classes if name in present] + sorted(present - set(classes))
        from sklearn.metrics import confusion_matrix

        plot_confusion(
            confusion_matrix(truth, predicted, labels=shown),
            shown,
            out / "confusion.png",
            title=Path(self.where).name,
        )
        plot_reliability(*calibration_bins(confidence, predicted == truth), out / "reliability.png", ece=result.ece)
        wrong = np.flatnonzero(predicted != truth)
        worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:WORST_ERRORS]
        shown_errors = [(keys[i], truth[i], predicted[i], float(confidence[i])) for i in worst]
        plot_errors(shown_errors, self.thumbnails([k for k, *_ in shown_errors]), out / "errors.png")
        return result


def classification_metrics(truth, predicted, ranked, confidence, data_classes, model_classes: int):
    """(report fields, per-class rows) of top-1 `predicted` and the first labels `ranked` of each image."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, recall_score

    correct = predicted == truth
    # The first 5 labels, or all the model's classes when it has fewer: enough columns to tell.
    depth = min(5, model_classes)
    top5 = (
        float(np.mean([t in row[:depth] for t, row in zip(truth, zip(*ranked), strict=True)]))
        if len(ranked) >= depth
        else None
    )
    with warnings.catch_warnings():  # predicted classes absent from the data are errors, not a warning
        warnings.simplefilter("ignore")
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, predicted, labels=data_classes, zero_division=0
        )
        report = {
            "top1": float(accuracy_score(truth, predicted)),
            "top5": top5,
            "macro_f1": float(f1_score(truth, predicted, labels=data_classes, average="macro", zero_division=0)),
            # balanced_accuracy_score's definition, restricted to the data's classes as it is.
            "balanced_accuracy": float(
                recall_score(truth, predicted, labels=data_classes, average="macro", zero_division=0)
            ),
            "ece": expected_calibration_error(confidence, correct),
            "images": len(truth),
            "classes": len(data_classes),
            "model_classes": model_classes,
        }
    per_class = [
        {"class": name, "precision": p, "recall": r, "f1": f, "support": int(n)}
        for name, p, r, f, n in zip(data_classes, precision, recall, f1, support, strict=True)
    ]
    return report, per_class


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS):
    """(images, accuracy, mean confidence) in each of `bins` equal-width confidence bins (NaN where empty)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; 0 goes to the first.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, np.bincount(which, correct, bins) / count, np.bincount(which, confidence, bins) / count


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ over equal-width confidence bins of (images in bin / images) × |accuracy − mean confidence| in the bin."""
    count, accuracy, mean_confidence = calibration_bins(confidence, correct, bins)
    filled = count > 0
    return float((count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])).sum() / max(count.sum(), 1))


def model_classes(cfg) -> list[str] | None:
    """The classes a classify config chooses from, known before any model is loaded: its --labels, or its run's
    classes; None when only the model knows them (a gallery's vote, --head pretrained)."""
    from pictag.models.run_dir import is_run_dir, read_meta
    from pictag.prompts import parse_labels

    if cfg.labels or cfg.labels_file:
        return parse_labels(cfg.labels, cfg.labels_file)
    if cfg.gallery or cfg.head:
        return None
    runs = cfg.model if isinstance(cfg.model, list) else [cfg.model]
    for run in runs:
        # A K-fold run (fusion) keeps its models in fold<i>/; they share the classes.
        for folder in [run, *sorted(Path(run).glob("fold*"))] if run and os.path.isdir(run) else []:
            classes = read_meta(folder).get("classes") if is_run_dir(folder) else None
            if classes:
                return list(classes)
    return None


def _read_predictions(path: str | os.PathLike) -> pa.Table:
    """Classify's output, CSV or Parquet, local or at a URL; labels as text even when they look like numbers."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pictag.storage.files import open_location
    from pictag.storage.tables import output_format

    fs, where = open_location(path)
    with fs.open(where, "rb") if fs else open(where, "rb") as f:
        if output_format(path) == ".parquet":
            return pq.read_table(f)
        text = pacsv.ConvertOptions(column_types={n: pa.string() for n in ("key", "id", "label", *LABEL_COLUMNS)})
        return pacsv.read_csv(f, convert_options=text)


def _source_truth(cfg, label_column: str) -> Truth:
    from pictag.data.sources import open_source
    from pictag.eval.plots import thumbnails

    source = open_source(
        cfg.source,
        index=cfg.index,
        path_column=cfg.path_column,
        index_columns=cfg.index_columns,
        labelled=True,
        label_column=label_column,
    )
    labels = {
        key: str(annotation.label)
        for shard in source.shards()
        for key, annotation in zip(shard.paths(), shard.annotations, strict=True)
    }
    return Truth(labels, str(cfg.source), lambda keys: thumbnails(source, keys))


def _product_truth(cfg) -> Truth:
    from pictag.data.crops import read_record
    from pictag.data.products import open_products
    from pictag.eval.plots import thumbnail

    source = open_products(
        cfg.source, images=cfg.images, id_col=cfg.id_column, label_col=cfg.label_column, text_cols=cfg.text_columns,
        need_label=True, quiet=True,
    )  # fmt: skip
    products = source.products
    first_view = {i: refs[0] for i, refs in zip(products.ids, source.views, strict=True) if refs}

    def thumbnails(keys: list[str]) -> dict:
        data = {key: read_record(source.parts, first_view[key]).data for key in keys if key in first_view}
        found = {key: thumbnail(image) for key, image in data.items() if image is not None}
        return {key: image for key, image in found.items() if image is not None}

    return Truth(dict(zip(products.ids, products.labels, strict=True)), str(cfg.source), thumbnails)
