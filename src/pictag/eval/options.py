"""The config of `pictag evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pictag.data.options import LabelOptions, ProductOptions
from pictag.models.options import ModelOptions
from pictag.pipeline.options import ResumableOutput, RuntimeOptions


@dataclass(kw_only=True)
class EvaluateConfig(ResumableOutput, RuntimeOptions, ModelOptions, ProductOptions, LabelOptions):
    """Everything `pictag evaluate` takes.

    Attributes:
        model: The model to evaluate: a run directory from `pictag train` (RUN), or any model spec (with --labels
            for a zero-shot classifier).
        data: Classify these labelled images and score the predictions: a folder of <class>/ folders, a table of
            path,label, or a product table with --images (fusion runs). Every class must be one the model knows.
        splits: A CSV from `pictag splits`: --query and --gallery then name its splits.
        query: Retrieval: the query images: split names with --splits (e.g. test), else a labelled folder of
            <class>/ or a table of path,label.
        gallery: What the queries search: split names with --splits (e.g. train,val), else a labelled folder or
            table. Unset: each query searches the other queries (leave-one-out).
        recall_at: The K of Recall@K, comma-separated.
        out: Report folder (RUN/eval when the model is a run directory): report.json, per_class.csv, plots,
            errors.csv and config.yaml; with --data also predictions.parquet, classify's output.
        label_column: Column of labels in a table (label when unset; a product table's: categories, else label).
        examples: Queries shown in retrievals.png.
        seed: Seed of the choice of the queries shown.
    """

    _out: ClassVar[str] = "folder"
    _renamed: ClassVar[dict[str, str]] = {"MODEL": "model"}  # evaluate took its model positionally
    _at_least: ClassVar[dict[str, int]] = {"examples": 1}

    data: str | None = None
    splits: str | None = None
    query: str | None = None
    gallery: str | None = None
    recall_at: str = "1,5"
    out: str | None = None
    examples: int = 8
    seed: int = 0
