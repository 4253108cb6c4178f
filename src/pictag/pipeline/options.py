"""The options of a batch job: how it runs here (`RuntimeOptions`), its resumable output, and `pictag classify`'s
config, which composes them with the model, data and executor groups.

A command's config lists its groups last to first (a dataclass takes the fields of its last base first), so
resolved configs read source, labels, model, runtime, output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pictag.config import Checked
from pictag.data.limits import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from pictag.data.options import GalleryOptions, LabelOptions, ProductOptions, SourceOptions
from pictag.distributed.options import ExecutorOptions
from pictag.models.options import EngineOptions, ModelOptions

DEFAULT_UNIT_SIZE = 1000


@dataclass(kw_only=True)
class RuntimeOptions(Checked):
    """runtime

    Attributes:
        batch_size: Images per forward pass.
        workers: Data-loading processes that read and decode images (one per core beside a GPU, half the cores
            on a CPU, when unset).
        max_pixels: Larger images are refused as decompression bombs.
        max_aspect_ratio: Images whose long side is more than this many times their short side are refused (their
            resize to the model's size would take gigabytes).
        decode: exact reproduces the model's reference preprocessing; fast decodes JPEGs with libjpeg-turbo's
            scaled decoding and an OpenCV resize (pictag[fast-decode]): several times faster, results not identical
            (agreement measured in docs/cpu-inference.md).
    """

    _at_least: ClassVar[dict[str, int]] = {"batch_size": 1, "workers": 0, "max_pixels": 1, "max_aspect_ratio": 1}

    batch_size: int = 64
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    decode: Literal["exact", "fast"] = "exact"


@dataclass(kw_only=True)
class ResumableOutput(Checked):
    """output

    Attributes:
        out: The output.
        resume: Finish an interrupted run: only units of work without a committed part run.
        overwrite: Replace an existing output.
        unit_size: Images per unit of work; each unit is committed as one part, so a kill loses at most one unit
            per worker.
    """

    _at_least: ClassVar[dict[str, int]] = {"unit_size": 1}

    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    unit_size: int = DEFAULT_UNIT_SIZE


@dataclass(kw_only=True)
class ClassifyConfig(
    ProductOptions,
    ExecutorOptions,
    ResumableOutput,
    EngineOptions,
    RuntimeOptions,
    ModelOptions,
    GalleryOptions,
    LabelOptions,
    SourceOptions,
):
    """Everything `pictag classify` takes.

    Attributes:
        out: Results file, .csv or .parquet (any case); - streams the rows to stdout. Without it, the answers are
            printed as a table once all are in, and nothing is written.
        model: Model spec (default: the store's with --embeddings, else $PICTAG_MODEL or
            open_clip:ViT-B-32/openai), or a run directory from `pictag train`.
        labels: Comma-separated labels, e.g. "cat,dog,car" (or a list in YAML); with --model RUN and no labels,
            the run's own classes (with its trained head; a clip run zero-shot).
        top_k: Labels and scores to write per image.
        threshold: Top-1 score below which the label is "unknown".
        embeddings: Classify an embedding store (`pictag embed`) instead of SOURCE: nothing is decoded.
        calibration: Temperature and per-class thresholds from `pictag calibrate` (YAML).
        head: The head, by its registered name (as in every command): zero-shot, which scores the --labels by
            their text prompts (CLIP-family models), or pretrained, the model's own classifier, without labels (timm
            weights trained on ImageNet: its 1,000 classes, names shipped with pictag). Zero-shot when unset.
        label_column: Column of labels: a product table's (categories, else label, when unset), or a labelled
            table's scored by --report (label when unset).
        images: Classify SOURCE, a product table, with fusion runs (--model RUN, repeatable): the folder of the
            products' images, found by id (<id>.jpg|.jpeg|.png|.webp, then <id>_*.*).
        tta: Test-time augmentation of a fusion run's images: flip averages each image with its mirror image.
        format: rows: id, label, score and the top-k; submission: id,label only (product tables); jsonl: one JSON
            object per image on stdout (without --out, or with --out -).
        probabilities: Also write every class's probability, one column per class (product tables).
        report: Score the predictions against SOURCE's labels (<class>/ folders, a table's label column, a product
            table's): print top-1 and write the report of `pictag evaluate --data` into OUT's .report/ folder.
    """

    _out: ClassVar[str] = "file"
    _at_least: ClassVar[dict[str, int]] = {"top_k": 1}
    # Options a command line may give several times; their values become a list.
    _repeatable: ClassVar[tuple[str, ...]] = ("model",)

    model: list[str] | str | None = None
    top_k: int = 1
    threshold: float | None = None
    embeddings: str | None = None
    calibration: str | None = None
    head: Literal["zero-shot", "pretrained"] | None = None
    tta: Literal["none", "flip"] = "none"
    format: Literal["rows", "submission", "jsonl"] = "rows"
    probabilities: bool = False
    report: bool = False
