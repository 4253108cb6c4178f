"""`pictag calibrate`: `calibrate(embeddings, truth, out, ...) -> CalibrateResult` fits a temperature and per-class
thresholds on a small labelled set of store images, so that `pictag classify --calibration` says "unknown" instead of
guessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch

from pictag.config import dump_config, load_config, sibling
from pictag.errors import PictagError
from pictag.heads.base import scores_from_logits
from pictag.heads.calibration import (
    FITTED,
    NO_DATA,
    UNREACHABLE,
    Calibration,
    coverage_accuracy,
    fit_temperature,
    fit_thresholds,
    head_options,
    nll,
    templates_digest,
)
from pictag.heads.knn import KnnHead
from pictag.pipeline.classify import classification_head
from pictag.store.options import CalibrateConfig
from pictag.store.store import EmbeddingStore

COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class CalibrateResult:
    calibration: Calibration
    out: Path
    table_out: Path
    plot_out: Path
    table: list[dict]

    def summary(self) -> str:
        s = self.calibration.summary
        lines = [
            f"calibrated on {s['samples']:,} labelled images: temperature {self.calibration.temperature:.3f} "
            f"(NLL {s['nll_before']:.4f} -> {s['nll_after']:.4f}), top-1 accuracy {s['accuracy']:.3f}",
            f"per-class thresholds for precision >= {self.calibration.target_precision:g}: coverage "
            f"{s['coverage']:.3f}, accuracy of covered {s['accuracy_covered']:.3f} ({s['fitted']} classes fitted, "
            f"{s['no_data']} without predictions use the pooled threshold "
            f"{self.calibration.global_threshold:.4f}, {s['unreachable']} unreachable: always unknown)",
            "coverage  accuracy  threshold",
        ]
        lines += [f"{row['coverage']:8.2f}  {row['accuracy']:8.4f}  {row['threshold']:9.4f}" for row in self.table]
        lines.append(f"-> {self.out}, {self.table_out}, {self.plot_out}")
        return "\n".join(lines)


def calibrate(
    embeddings: str, truth: str, out: str, labels: list[str] | str | None = None, **options
) -> CalibrateResult:
    """Fit the calibration of `labels` on the store images listed in `truth` and write it to `out`; the Python twin
    of `pictag calibrate`: options are the CalibrateConfig fields.

    Raises:
        PictagError: unreadable truth file, truth labels not in the label list, or no truth key in the store.
    """
    from pictag.eval.plots import plot_coverage_accuracy

    cfg = load_config(CalibrateConfig, embeddings=embeddings, truth=truth, out=out, labels=labels, **options)
    if not 0 < cfg.target_precision <= 1:
        raise PictagError(f"--target-precision must be in (0, 1], not {cfg.target_precision}")
    if Path(cfg.out).suffix not in (".yaml", ".yml"):
        raise PictagError(f"--out {cfg.out} must end in .yaml")
    store = EmbeddingStore(cfg.embeddings)
    encoder = store.encoder(cfg.model, cfg.checkpoint, device=cfg.device)
    # Zero-shot over --labels, or a trained run's own head and classes (the store was embedded with --model RUN).
    if cfg.gallery:
        features, gallery_labels = EmbeddingStore(cfg.gallery).gallery(encoder)
        head, labels = KnnHead.from_labels(features, gallery_labels, cfg.knn_k, cfg.knn_weights)
    else:
        head, labels = classification_head(encoder, encoder.spec, cfg.labels, cfg.labels_file, cfg.templates)
    truth_keys, truth_labels = _read_truth(cfg.truth, labels)
    keys, features = store.get(truth_keys)
    if not keys:
        raise PictagError(f"none of the {len(truth_keys):,} keys of {cfg.truth} is in {store.folder}: check the keys")
    label_of = dict(zip(truth_keys, truth_labels))
    truth = torch.tensor([labels.index(label_of[key]) for key in keys])

    with torch.no_grad():
        logits = head(torch.from_numpy(features).to(encoder.device)).float().cpu()
    bias = head.logit_bias
    temperature = fit_temperature(logits, truth, bias)
    scores_t, predicted_t = scores_from_logits(logits, temperature, bias).max(dim=1)
    scores, predicted, y = scores_t.numpy(), predicted_t.numpy(), truth.numpy()
    thresholds, classes, global_threshold = fit_thresholds(scores, predicted, y, labels, cfg.target_precision)

    correct = predicted == y
    accepted = scores >= np.array([thresholds[labels[i]] for i in predicted])
    coverage, accuracy, levels = coverage_accuracy(scores, correct)
    table = _table(coverage, accuracy, levels)
    statuses = [c["status"] for c in classes.values()]
    summary = {
        "samples": len(keys),
        "missing_keys": len(truth_keys) - len(keys),
        "nll_before": nll(logits, truth, 1.0, bias),
        "nll_after": nll(logits, truth, temperature, bias),
        "accuracy": float(correct.mean()),
        "coverage": float(accepted.mean()),
        "accuracy_covered": float(correct[accepted].mean()) if accepted.any() else float("nan"),
        "fitted": statuses.count(FITTED),
        "no_data": statuses.count(NO_DATA),
        "unreachable": statuses.count(UNREACHABLE),
    }
    calibration = Calibration(
        model=encoder.spec,
        weights_id=encoder.weights_id,
        templates=_templates_name(head, cfg.templates),
        templates_digest=templates_digest(getattr(head, "templates", [])),
        labels=labels,
        temperature=temperature,
        target_precision=cfg.target_precision,
        global_threshold=global_threshold,
        thresholds=thresholds,
        classes=classes,
        summary=summary,
        head=head_options(head.config()),
    )
    out = calibration.save(cfg.out)
    dump_config(cfg, sibling(out, ".config.yaml"))
    table_out = sibling(out, ".coverage.csv")
    pacsv.write_csv(pa.Table.from_pylist(table), table_out)
    plot_out = plot_coverage_accuracy(
        coverage,
        accuracy,
        sibling(out, ".coverage.png"),
        operating_point=(summary["coverage"], summary["accuracy_covered"]),
        target=cfg.target_precision,
        title=f"{encoder.spec}: {len(labels)} labels, {len(keys):,} labelled images",
    )
    return CalibrateResult(calibration, out, table_out, plot_out, table)


def _templates_name(head, templates) -> str:
    if not hasattr(head, "templates"):
        return "(trained head)"
    return templates if isinstance(templates, str) else "(list)"


def _read_truth(path: str | os.PathLike, labels: list[str]) -> tuple[list[str], list[str]]:
    if not os.path.isfile(path):
        raise PictagError(f"truth file {path} does not exist: give a CSV with columns key,label")
    try:
        table = pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(column_types={"key": pa.string(), "label": pa.string()})
        )
    except pa.ArrowInvalid as exc:
        raise PictagError(f"truth file {path} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    if not {"key", "label"} <= set(table.column_names):
        raise PictagError(f"truth file {path} needs columns key,label (it has {', '.join(table.column_names)})")
    keys, truth = table.column("key").to_pylist(), [str(x).strip() for x in table.column("label").to_pylist()]
    unknown = sorted(set(truth) - set(labels))
    if unknown:
        raise PictagError(
            f"truth file {path} uses labels not in the label list: {', '.join(unknown[:5])}; add them or drop those rows"
        )
    return keys, truth


def _table(coverage: np.ndarray, accuracy: np.ndarray, thresholds: np.ndarray) -> list[dict]:
    """Accuracy and the global threshold needed at each coverage level."""
    rows = []
    for level in COVERAGE_LEVELS:
        i = min(int(np.ceil(level * len(coverage))) - 1, len(coverage) - 1)
        rows.append({"coverage": float(coverage[i]), "accuracy": float(accuracy[i]), "threshold": float(thresholds[i])})
    return rows
