"""What every command takes: option groups shared by commands, and one config dataclass per command.

A command's config lists its groups last to first (a dataclass takes the fields of its last base first), so
resolved configs read source, labels, model, runtime, output.

Each option is declared once, here, with its help in the class docstring; the CLI is generated from these classes
(`pictag.cli.common`), YAML files fill them (`pictag.config.load_config`), and the resolved config is written
beside each output. This module imports no model library, so `pictag --help` stays instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pictag.config import option_name
from pictag.data.decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from pictag.errors import PictagError
from pictag.models.registry import default_model

DEFAULT_UNIT_SIZE = 1000
Precision = Literal["auto", "fp32", "tf32", "fp16", "bf16"]


class Checked:
    """Checks the numbers of every option group a config is made of, whichever path built it (CLI, YAML, Python).

    A group lists its lower bounds in `_at_least`, and the interval of each real number in `_within`, written as
    in mathematics: "[0, 1)" allows 0 but not 1, "(0, inf)" any positive number. A number checked by `_within` must
    also be finite (nan passes every comparison). Both are gathered over all the config's bases.
    """

    _at_least: ClassVar[dict[str, int]] = {}
    _within: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for klass in type(self).__mro__:
            for name, least in vars(klass).get("_at_least", {}).items():
                value = getattr(self, name)
                if value is not None and value < least:
                    raise PictagError(f"{option_name(type(self), name)} must be at least {least}, not {value}")
            for name, interval in vars(klass).get("_within", {}).items():
                value = getattr(self, name)
                if value is not None:
                    check_within(value, interval, option_name(type(self), name))


def check_within(value: float, interval: str, option: str) -> float:
    """`value` when it is a finite number inside `interval` ("[0, 1)", "(0, inf)", ...); see `Checked`.

    Raises:
        PictagError: anything else, naming the option and the interval.
    """
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or (value < low if interval[0] == "[" else value <= low)
        or (value > high if interval[-1] == "]" else value >= high)
    ):
        raise PictagError(f"{option} must be a finite number in {interval}, not {value!r}")
    return value


def group_values(text: str | float | None, option: str, interval: str) -> dict[str | None, float]:
    """The numbers of a per-group option: "1e-4" gives {None: 1e-4} (every group), "backbone=1e-5,head=3e-4" gives
    {"backbone": 1e-5, "head": 3e-4}; each a finite number inside `interval` (see `Checked`). The names are the
    task's to check (`pictag.train.optim.per_group`).

    Raises:
        PictagError: an item that is not NAME=NUMBER, or a number outside the interval.
    """
    if text is None or str(text).strip() == "":
        return {}
    items = [(None, str(text))] if "=" not in str(text) else [item.partition("=")[::2] for item in str(text).split(",")]
    values: dict[str | None, float] = {}
    for name, number in items:
        name = name.strip() if name is not None else None
        try:
            value = float(number)
        except ValueError:
            example = f"{option} 1e-4 or {option} head=1e-3,backbone=1e-5"
            raise PictagError(f"{option} {text!r}: give NAME=NUMBER pairs or one number, e.g. {example}") from None
        values[name] = check_within(value, interval, option if name is None else f"{option} {name}")
    return values


@dataclass(kw_only=True)
class ModelOptions:
    """model

    Attributes:
        model: Model spec: open_clip:ARCH/TAG, hf:ORG/NAME or hf:/dir, timm:NAME, or a run directory from
            `pictag train` ($PICTAG_MODEL, else open_clip:ViT-B-32/openai, when unset).
        checkpoint: Local weights file loaded into the --model architecture instead of downloading.
        random_weights: Random weights, for tests and benchmarks.
        device: cpu, cuda, cuda:N or mps (best available when unset).
        precision: Autocast precision. auto (when unset, unless $PICTAG_PRECISION names one): half on GPUs,
            bf16 on CPUs with native bf16 (AVX512-BF16 or AMX-BF16), fp32 on other CPUs. fp32 is exact.
    """

    model: str = field(default_factory=default_model)
    checkpoint: str | None = None
    random_weights: bool = False
    device: str | None = None
    precision: Precision | None = None


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
class EngineOptions(Checked):
    """engine

    Attributes:
        engine: What runs the model's towers: torch (eager), onnx (ONNX Runtime, pictag[onnx]), openvino
            (pictag[openvino]), or auto (the fastest installed here, measured once per model and machine). The
            engines run on the CPU; --precision picks fp32 (exact) or bf16 (openvino).
        quantize: int8: post-training static quantization of the image tower (onnx or openvino), calibrated on
            --calibration-images of the source's own images; its agreement with fp32 is measured and printed.
        calibration_images: Images of the source that calibrate --quantize int8; the next ones (up to 200) are
            held out to measure its agreement with fp32.
        min_agreement: Top-1 agreement with fp32, on the held-out images, below which --quantize int8 warns.
        strict: Refuse an int8 model whose agreement is below --min-agreement, instead of warning.
    """

    _at_least: ClassVar[dict[str, int]] = {"calibration_images": 1}

    engine: Literal["torch", "onnx", "openvino", "auto"] = "torch"
    quantize: Literal["int8"] | None = None
    calibration_images: int = 300
    min_agreement: float = 0.99
    strict: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.min_agreement <= 1:
            raise PictagError(f"--min-agreement is a fraction between 0 and 1, not {self.min_agreement}")


@dataclass(kw_only=True)
class SourceOptions:
    """source

    Attributes:
        source: Images: a folder, an image, file.tar, "shards/{000000..000009}.tar", table.csv/.parquet, s3://...
        index: Parquet (key, offset, size) index of a TAR source, from `pictag index`.
        index_columns: The index's column names when they are not the usual ones, e.g.
            key=filename,offset=start,size=length.
        path_column: Column of image paths in a CSV/Parquet table source.
    """

    _positional: ClassVar[tuple[str, ...]] = ("source",)

    source: str | None = None
    index: str | None = None
    index_columns: str | None = None
    path_column: str = "path"


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
class ExecutorOptions(Checked):
    """executor

    Attributes:
        executor: Where units of work run: inprocess (this machine), or ray (an actor pool on a Ray cluster;
            the output must be on storage every node reaches: a shared folder, s3://, gs://).
        ray_address: Ray cluster to join: auto (the one `ray start` made here), ray://HOST:10001, or unset to
            start a local Ray for this run.
        concurrency: Ray actors: N, or MIN,MAX to let the pool grow with the cluster (as many as the cluster's
            CPUs / GPUs fit, when unset).
        gpus_per_worker: GPUs per Ray actor; fractions share a GPU (0.5: two actors per GPU).
        cpus_per_worker: CPUs per Ray actor (its model threads and, with --actor-workers 0, its decoding).
        actor_workers: Data-loading processes per Ray actor (0: the actor decodes its unit itself).
    """

    _at_least: ClassVar[dict[str, int]] = {"actor_workers": 0}

    executor: Literal["inprocess", "ray"] = "inprocess"
    ray_address: str | None = None
    concurrency: str | int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    actor_workers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        concurrency_range(self.concurrency)
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise PictagError("--gpus-per-worker and --cpus-per-worker must be at least 0")


def concurrency_range(value: str | int | None) -> tuple[int, int] | None:
    """(min, max) actors from --concurrency "N" or "MIN,MAX"; None when unset.

    Raises:
        PictagError: anything else.
    """
    if value is None:
        return None
    try:
        numbers = [int(v) for v in str(value).split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 1 or numbers[0] > numbers[-1]:
        raise PictagError(f"--concurrency must be N or MIN,MAX with 1 <= MIN <= MAX, not {value!r}")
    return numbers[0], numbers[-1]


@dataclass(kw_only=True)
class ProductOptions:
    """products (a table of id, label and text fields, with images by id: --task fusion)

    Attributes:
        images: Folder of the products' images, found by id: <id>.jpg|.jpeg|.png|.webp, then <id>_*.* (several
            views of one product).
        id_col: Id column of a product table (id when unset).
        label_col: Label column of a product table (categories, else label, when unset).
        text_cols: Text columns of a product table, comma-separated, joined in order (title,description, else
            text, when unset).
        multi_image: A product with several images: first; random (one view drawn per training step; validation
            and inference take the mean of their embeddings); or mean_pool (the mean of their embeddings).
        missing_image: A product without an image: placeholder (a black image, counted and reported) or error.
    """

    images: str | None = None
    id_col: str | None = None
    label_col: str | None = None
    text_cols: str | None = None
    multi_image: Literal["first", "random", "mean_pool"] = "first"
    missing_image: Literal["placeholder", "error"] = "placeholder"


@dataclass(kw_only=True)
class LabelOptions:
    """labels

    Attributes:
        labels: Comma-separated labels, e.g. "cat,dog,car" (or a list in YAML).
        labels_file: File with one label per line.
        templates: Prompt templates: simple, imagenet80, or a file with one {} template a line.
    """

    labels: list[str] | str | None = None
    labels_file: str | None = None
    templates: str | list[str] = "simple"


@dataclass(kw_only=True)
class GalleryOptions(Checked):
    """gallery (kNN vote instead of labels)

    Attributes:
        gallery: Label each image by a vote of its nearest images in this labelled embedding store
            (`pictag embed --labelled`, made with the same model), instead of text labels.
        knn_k: Gallery neighbours that vote (when unset, the k of 1, 3, 5, 10, 20, 50 most accurate on the gallery's
            own inner folds).
        knn_weights: How a neighbour's vote counts: uniform (1) or distance (1 / its L2 distance).
    """

    _at_least: ClassVar[dict[str, int]] = {"knn_k": 1}

    gallery: str | None = None
    knn_k: int | None = None
    knn_weights: Literal["uniform", "distance"] = "uniform"


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
        head: zero-shot: score the --labels by their text prompts (CLIP-family models); pretrained: the model's
            own classifier, without labels (timm weights trained on ImageNet: its 1,000 classes, names shipped
            with pictag). Zero-shot when unset.
        images: Classify SOURCE, a product table, with fusion runs (--model RUN, repeatable): the folder of the
            products' images, found by id (<id>.jpg|.jpeg|.png|.webp, then <id>_*.*).
        tta: Test-time augmentation of a fusion run's images: flip averages each image with its mirror image.
        format: rows: id, label, score and the top-k; submission: id,label only (product tables); jsonl: one JSON
            object per image on stdout (without --out, or with --out -).
        probabilities: Also write every class's probability, one column per class (product tables).
        report: Score the predictions against SOURCE's labels (<class>/ folders, a table's label column, a product
            table's): print top-1 and write the report of `pictag evaluate --data` into OUT's .report/ folder.
    """

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


@dataclass(kw_only=True)
class EmbedConfig(ExecutorOptions, ResumableOutput, EngineOptions, RuntimeOptions, ModelOptions, SourceOptions):
    """Everything `pictag embed` takes.

    Attributes:
        out: The store folder: a local path or an fsspec URL (s3://bucket/emb).
        dtype: Stored precision.
        labelled: Store each image's label beside its vector (its class folder, or the table's --label-column), so
            that the store can be a gallery: `pictag classify --gallery STORE`.
        label_column: Column of labels in a table, with --labelled.
    """

    _required: ClassVar[tuple[str, ...]] = ("source", "out")

    dtype: Literal["float16", "float32"] = "float16"
    labelled: bool = False
    label_column: str = "label"


@dataclass(kw_only=True)
class StoreModelOptions:
    """model (default: the store's)

    Attributes:
        model: Override the store's model spec (it must be the same weights).
        checkpoint: Override the store's checkpoint file (it must be the same weights).
        device: cpu, cuda, cuda:N or mps (best available when unset).
    """

    model: str | None = None
    checkpoint: str | None = None
    device: str | None = None


@dataclass(kw_only=True)
class CalibrateConfig(StoreModelOptions, GalleryOptions, LabelOptions):
    """Everything `pictag calibrate` takes.

    Attributes:
        embeddings: Embedding store (a folder or fsspec URL), from `pictag embed`.
        truth: CSV with columns key,label: the labelled images.
        out: Calibration file, .yaml.
        templates: Prompt templates: simple, imagenet80, or a file (use the same for classify).
        target_precision: Precision each class threshold must reach.
    """

    _positional: ClassVar[tuple[str, ...]] = ("embeddings",)
    _required: ClassVar[tuple[str, ...]] = ("embeddings", "truth", "out")

    embeddings: str | None = None
    truth: str | None = None
    out: str | None = None
    target_precision: float = 0.9


@dataclass(kw_only=True)
class SearchConfig(Checked, StoreModelOptions):
    """Everything `pictag search` takes.

    Attributes:
        embeddings: Embedding store (a folder or fsspec URL), from `pictag embed`.
        text: Query text.
        image: Query image file.
        top_k: Results per query.
        search_param: nprobe (IVF) or efSearch (HNSW) instead of the tuned value: trade speed for recall.
        paths: Show where each image is (path, URL or tar member).
        out: Also write the results to this .csv or .parquet.
    """

    _positional: ClassVar[tuple[str, ...]] = ("embeddings",)
    _required: ClassVar[tuple[str, ...]] = ("embeddings",)
    _at_least: ClassVar[dict[str, int]] = {"top_k": 1}

    embeddings: str | None = None
    text: str | None = None
    image: str | None = None
    top_k: int = 10
    search_param: int | None = None
    paths: bool = False
    out: str | None = None


@dataclass(kw_only=True)
class IndexEmbeddingsConfig:
    """Everything `pictag index-embeddings` takes.

    Attributes:
        embeddings: Embedding store (a folder or fsspec URL), from `pictag embed`.
        index_type: auto: flat below 1M vectors, IVF from 1M.
        nlist: IVF inverted lists (about sqrt(N) when unset).
        m: HNSW neighbours per node.
        search_param: Fix nprobe (IVF) / efSearch (HNSW) instead of tuning it.
        target_recall: Recall@10 against exact search to tune for.
    """

    _positional: ClassVar[tuple[str, ...]] = ("embeddings",)
    _required: ClassVar[tuple[str, ...]] = ("embeddings",)

    embeddings: str | None = None
    index_type: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    nlist: int | None = None
    m: int | None = None
    search_param: int | None = None
    target_recall: float = 0.95


@dataclass(kw_only=True)
class IndexConfig:
    """Everything `pictag index` takes.

    Attributes:
        tar: An uncompressed .tar file.
        out: Index path (default: beside the tar, NAME.index.parquet).
    """

    _positional: ClassVar[tuple[str, ...]] = ("tar",)
    _required: ClassVar[tuple[str, ...]] = ("tar",)

    tar: str | None = None
    out: str | None = None


@dataclass(kw_only=True)
class VerifyConfig:
    """Everything `pictag verify` takes.

    Attributes:
        out: The output to check: a classify results file, an embedding store, or a run's parts folder.
    """

    _positional: ClassVar[tuple[str, ...]] = ("out",)
    _required: ClassVar[tuple[str, ...]] = ("out",)

    out: str | None = None


@dataclass(kw_only=True)
class ModelsConfig:
    """Everything `pictag models` takes.

    Attributes:
        scheme: Only this backend.
        grep: Only specs containing this text (case-insensitive).
        cached: Only models whose weights are in the local Hugging Face cache, with their sizes.
    """

    _positional: ClassVar[tuple[str, ...]] = ("scheme",)

    scheme: Literal["open_clip", "hf", "timm"] | None = None
    grep: str | None = None
    cached: bool = False


@dataclass(kw_only=True)
class DownloadConfig:
    """Everything `pictag download` takes.

    Attributes:
        spec: The model spec to fetch: open_clip:ARCH/TAG, hf:ORG/NAME or timm:NAME.
        to: Also write it as a self-contained folder that --model DIR loads with no hub and no cache.
        overwrite: Replace an existing --to folder.
    """

    _positional: ClassVar[tuple[str, ...]] = ("spec",)
    _required: ClassVar[tuple[str, ...]] = ("spec",)

    spec: str | None = None
    to: str | None = None
    overwrite: bool = False


@dataclass(kw_only=True)
class FewshotConfig(RuntimeOptions, ModelOptions):
    """Everything `pictag fewshot` takes.

    Attributes:
        test_dir: Folder of tasks (or one task folder).
        out: Results file, .csv or .parquet.
        method: prototype, tip-adapter, linear-probe, auto (best support accuracy per task), or finetuned (the
            head stored by fewshot-train in --checkpoint).
        templates: Prompt templates for CLIP text prototypes (Tip-Adapter): simple, imagenet80.
        overwrite: Replace an existing output.
    """

    _positional: ClassVar[tuple[str, ...]] = ("test_dir",)
    _required: ClassVar[tuple[str, ...]] = ("test_dir", "out")

    test_dir: str | None = None
    out: str | None = None
    method: str = "auto"
    templates: str = "simple"
    overwrite: bool = False


@dataclass(kw_only=True)
class FewshotEvalConfig(RuntimeOptions, ModelOptions):
    """Everything `pictag fewshot-eval` takes.

    Attributes:
        data: Labelled sources: folders of <class>/*.jpg (local, in a tar, or at a URL) or tables with a label
            column; several pool their classes by name.
        ways: Classes per episode.
        shots: Support images per class, comma-separated.
        episodes: Episodes per shot count.
        queries: Query images per class and episode.
        method: all, or comma-separated: prototype,tip-adapter,linear-probe,auto.
        seed: Seed of the episode sampler.
        out: Folder for scores.csv, accuracy.png and config.yaml.
        templates: Prompt templates for CLIP text prototypes (Tip-Adapter).
    """

    _positional: ClassVar[tuple[str, ...]] = ("data",)
    _required: ClassVar[tuple[str, ...]] = ("data",)

    data: list[str] | str | None = None
    ways: int = 5
    shots: list[int] | str = "1,5,16"
    episodes: int = 200
    queries: int = 15
    method: str = "all"
    seed: int = 0
    out: str | None = None
    templates: str = "simple"


@dataclass(kw_only=True)
class FinetuneConfig(RuntimeOptions, ModelOptions):
    """Everything `pictag fewshot-train` takes.

    Attributes:
        train_data: Folder of <class>/*.jpg.
        val_data: Folder of <class>/*.jpg with the same classes; picks best.pth.
        out: Checkpoint folder.
        unfreeze_blocks: Blocks trained, counted from the last.
        epochs: Training epochs.
        batch_size: Images per training step.
        lr_backbone: Learning rate of the unfrozen blocks.
        lr_head: Learning rate of the head.
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        warmup_epochs: Epochs of linear learning-rate warmup before the cosine decay.
        seed: Seed of initialisation, data order and augmentation.
        fresh: Start over, ignoring OUT/last.ckpt (a rerun otherwise continues from it).
    """

    _required: ClassVar[tuple[str, ...]] = ("train_data",)
    _at_least: ClassVar[dict[str, int]] = {"epochs": 1, "unfreeze_blocks": 0}
    _within: ClassVar[dict[str, str]] = {
        "lr_backbone": "(0, inf)",
        "lr_head": "(0, inf)",
        "weight_decay": "[0, inf)",
        "label_smoothing": "[0, 1)",
        "warmup_epochs": "[0, inf)",
        "seed": "[0, 4294967295]",
    }

    train_data: str | None = None
    val_data: str | None = None
    out: str = "ckpt"
    unfreeze_blocks: int = 6
    epochs: int = 30
    batch_size: int = 32
    lr_backbone: float = 1e-5
    lr_head: float = 5e-4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0
    fresh: bool = False


@dataclass(kw_only=True)
class LabelmeCropsConfig(Checked):
    """Everything `pictag labelme-crops` takes.

    Attributes:
        annotations: Folder of labelme .json files (searched recursively), or one .json file.
        out: Output folder: OUT/<label>/<json stem>_<n>.jpg, OUT/crops.csv, OUT/crops.errors.csv.
        pad: Margin added on each side of a box, as a fraction of its width and height (0.1 adds 10%), kept
            within the image.
        min_size: Crops whose shorter side is below this many pixels are skipped and counted.
        labels: Keep only these labels (as named after --label-map), comma-separated.
        label_map: Rename labels: old=new, comma-separated (several old names may map to one new one).
        mask: Blank (black) the outside of polygons, rotated boxes and circles instead of keeping their whole box.
        overwrite: Replace the crops of an earlier run in OUT (only the files its crops.csv lists).
        quality: JPEG quality of the crops.
        max_pixels: Larger images are refused as decompression bombs.
    """

    _positional: ClassVar[tuple[str, ...]] = ("annotations",)
    _required: ClassVar[tuple[str, ...]] = ("annotations", "out")
    _at_least: ClassVar[dict[str, int]] = {"min_size": 1, "quality": 1, "max_pixels": 1}

    annotations: str | None = None
    out: str | None = None
    pad: float = 0.0
    min_size: int = 1
    labels: list[str] | str | None = None
    label_map: list[str] | str | None = None
    mask: bool = False
    overwrite: bool = False
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(kw_only=True)
class TrainConfig(ProductOptions, RuntimeOptions, ModelOptions):
    """Everything `pictag train` takes.

    Attributes:
        data: Training images: a folder of <class>/*.jpg (in place or in a tar), or a table of path,label[,text];
            with --task fusion, a product table (id, label, text fields) and --images.
        out: The run folder: last.ckpt (resume), best/ (the model: --model RUN), metrics.csv, curves.png,
            confusion.png, per_class.csv, tb/ (TensorBoard) and config.yaml.
        task: What is trained: classifier (backbone + head, cross-entropy), clip (contrastive, stays zero-shot),
            arcface (an embedding for retrieval and kNN galleries, with P×K batches), or another registered task.
        head: The classifier's head, initialised from the class prototypes: linear, mlp or cosine.
        val: Validation images with the training classes (folder or table); picks best/ and drives early stopping.
        val_split: Hold out this fraction of each training class for validation (stratified, seeded).
        folds: Stratified K-fold cross-validation: the number of folds (with --fold). Tasks that cross-validate
            (fusion) train every fold into OUT/fold<i>/ (or only --fold i) and write OUT/oof.csv and OUT/cv.json.
        fold: Which fold validates: 0..K-1 with --folds, or a value of the table's fold column.
        label_column: Column of labels in a table.
        text_column: Column of texts in a table (default: text, where there is one).
        epochs: Training epochs (including --freeze-epochs).
        batch_size: Images per step on each device (times --accumulate for one optimiser step).
        lr: Learning rate: one number for every group, or per group, e.g. backbone=1e-5,head=3e-4 (a group not
            named: 1e-4; the head after the head stage: the backbone's rate, or a tenth of the swept one with
            frozen towers; otherwise 1e-3).
        weight_decay: AdamW weight decay: one number, or per group like --lr (0.05 when unset; never on norms
            and biases).
        layer_decay: Layer-wise learning-rate decay: each image block back from the last gets this factor more.
        schedule: After warmup: cosine or linear decay to 0 per step, cosine-restarts (cosine to 0 over --t0
            epochs, then again over --t-mult times as many, ...), or plateau (x0.1 when the early-stopping metric
            stops improving for --patience epochs, or 2 epochs).
        warmup_epochs: Epochs of linear warmup.
        precision: Training precision: bf16 on Ampere and newer GPUs, fp16 (with a gradient scaler) on older
            ones, fp32 on CPU, when unset ($PICTAG_PRECISION when set); the first line says what trains.
        accumulate: Batches per optimiser step (1 when unset); a batch too large for the memory free is also split
            into micro-batches that accumulate, so the optimiser still sees the batch asked for.
        clip_grad: Clip the gradients' global norm to this.
        label_smoothing: Cross-entropy label smoothing (0.1 when unset; 0.0 for --task fusion).
        early_stop: Validation metric watched by early stopping and best/: val_top1, val_top3, val_top5, val_loss,
            or val_recall@1 (leave-one-out Recall@1 of the validation embeddings). The task's own when unset:
            val_top1, val_recall@1 for arcface.
        patience: Stop after this many epochs without improvement of --early-stop (never when unset; 2 for --task
            fusion).
        ema: Keep an exponential moving average of the weights with this decay (e.g. 0.999); it is validated
            and saved.
        freeze_epochs: Train the head alone for this many epochs, through the images, then the backbone too
            (arcface: the warm-up, with margin 0); unset, the head is first fitted on cached frozen features (the
            head stage, LP-FT) and everything trains from the first epoch. When it covers every --epochs without
            --init-from (a linear probe), a classifier never runs the backbone while training: each training and
            validation image is embedded once (its eval crop, cached, in inference's precision), the head stage
            runs, and the epochs train the head on the cache at the rate it chose, in seconds.
        unfreeze_blocks: Train only the last N blocks of the image tower (all of it when unset).
        init_from: Start from another run's best weights (stage 2 after stage 1).
        balance: Sample classes evenly.
        seed: Seed of initialisation, splits, data order and augmentation.
        save_every: Also save last.ckpt every N optimiser steps (always at the end of each epoch).
        fresh: Start over, ignoring last.ckpt (a rerun otherwise continues from it).
        templates: Prompt templates of the clip task's label texts and zero-shot validation: simple, imagenet80,
            or a file with one {} template a line.
        wise_ft: The clip task also writes RUN/wise-ft-A/: the WiSE-FT weights (1 - A) * original + A * fine-tuned.
        splits: A splits CSV from `pictag splits` (path,class,id,split) of the DATA folder: train on its train rows,
            validate on its val rows (with --task arcface, validation classes may be new ones).
        embed_dim: The arcface task's embedding length (Linear from the backbone's features).
        embed_norm: batchnorm after the arcface embedding's Linear, or none.
        margin_loss: The arcface task's loss: arcface (angular margin), or cosface (cosine margin; try
            --arcface-m 0.35).
        arcface_s: Scale s of the margin loss (below 10 classes, s=48 with m=0.3 suits better).
        arcface_m: Margin m (radians for arcface); 0 during --freeze-epochs, the warm-up in which the backbone is
            frozen and the embedding and class centres settle.
        subcenters: Class centres per class (sub-center ArcFace, which tolerates noisy labels, when above 1).
        classes_per_batch: P of the arcface task's P×K batches (when unset, --batch-size / K classes, at most
            every class, so the batch holds about --batch-size images); the batch has P×K images.
        samples_per_class: K of the P×K batches; a class with fewer images is drawn with replacement (reported).
        t0: Epochs of the first cycle of --schedule cosine-restarts.
        t_mult: Each cycle of --schedule cosine-restarts is this many times longer than the one before.
        image_size: Train, and store with the run, at this square input size instead of the weights' own (a CNN
            takes any size; 128 trains several times faster than 224 on a CPU).
        text_model: The fusion task's text tower from another spec (e.g. hf:DIR of a sentence-transformers
            folder, mean pooling); --model is then any image model (timm included). Both towers from the --model
            CLIP spec when unset.
        freeze_encoders: Keep both towers frozen (fusion stage 1): each image view and text is embedded once,
            cached, and only the head trains, on the cache.
        ablate: The fusion task also trains image-only and text-only heads in the same run and reports them.
        warmup_ratio: Linear warmup over this fraction of all optimiser steps (instead of --warmup-epochs).
        logger: Where the numbers also go, comma-separated: tensorboard (RUN/tb), csv (RUN/csv, every step), mlflow
            ($MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db), wandb ($WANDB_PROJECT; WANDB_MODE=offline for no
            server), or none. RUN/metrics.csv and curves.png are always written.
        log_every: How often a log that is not a terminal gets a progress line within an epoch: seconds (30s) or
            optimiser steps (50).
    """

    _positional: ClassVar[tuple[str, ...]] = ("data",)
    _required: ClassVar[tuple[str, ...]] = ("data", "out")
    _at_least: ClassVar[dict[str, int]] = {
        "epochs": 1,
        "freeze_epochs": 0,
        "patience": 1,
        "save_every": 1,
        "embed_dim": 1,
        "subcenters": 1,
        "classes_per_batch": 1,
        "samples_per_class": 1,
        "image_size": 8,
        "t_mult": 1,
        "accumulate": 1,
        "folds": 2,
        "unfreeze_blocks": 0,
    }
    _within: ClassVar[dict[str, str]] = {
        "val_split": "(0, 1)",
        "layer_decay": "(0, 1]",
        "warmup_epochs": "[0, inf)",
        "warmup_ratio": "[0, 1]",
        "clip_grad": "(0, inf)",
        "label_smoothing": "[0, 1)",
        "ema": "[0, 1)",  # 0: no average
        "wise_ft": "[0, 1]",
        "arcface_s": "(0, inf)",
        "arcface_m": "[0, inf)",
        "t0": "(0, inf)",
        "seed": "[0, 4294967295]",  # numpy's seeds are 32-bit
    }

    data: str | None = None
    out: str | None = None
    task: str = "classifier"
    head: Literal["linear", "mlp", "cosine"] = "linear"
    val: str | None = None
    val_split: float | None = None
    folds: int | None = None
    fold: str | None = None
    label_column: str = "label"
    text_column: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: str | None = None
    weight_decay: str | None = None
    layer_decay: float | None = None
    schedule: Literal["cosine", "linear", "plateau", "cosine-restarts"] = "cosine"
    warmup_epochs: float = 1.0
    accumulate: int | None = None
    clip_grad: float | None = None
    label_smoothing: float | None = None
    early_stop: Literal["val_top1", "val_top3", "val_top5", "val_loss", "val_recall@1"] | None = None
    patience: int | None = None
    ema: float | None = None
    freeze_epochs: int = 0
    unfreeze_blocks: int | None = None
    init_from: str | None = None
    balance: bool = False
    seed: int = 0
    save_every: int | None = None
    fresh: bool = False
    templates: str = "simple"
    wise_ft: float | None = None
    text_model: str | None = None
    freeze_encoders: bool = False
    ablate: bool = False
    warmup_ratio: float | None = None
    logger: str = "tensorboard"
    log_every: str = "30s"
    # Metric learning (--task arcface).
    splits: str | None = None
    embed_dim: int = 512
    embed_norm: Literal["batchnorm", "none"] = "batchnorm"
    margin_loss: Literal["arcface", "cosface"] = "arcface"
    arcface_s: float = 64.0
    arcface_m: float = 0.5
    subcenters: int = 1
    classes_per_batch: int | None = None
    samples_per_class: int = 4
    image_size: int | None = None
    t0: float = 1.0
    t_mult: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        group_values(self.lr, "--lr", "(0, inf)")  # a negative rate is gradient ascent
        group_values(self.weight_decay, "--weight-decay", "[0, inf)")
        from pictag.train.loggers import parse_every, parse_loggers

        parse_loggers(self.logger)
        parse_every(self.log_every)


@dataclass(kw_only=True)
class ExportConfig:
    """Everything `pictag export` takes.

    Attributes:
        run: Run directory from `pictag train` (RUN, RUN/best or RUN/wise-ft-A).
        format: hf: a save_pretrained folder (transformers' CLIPModel/CLIPProcessor for a CLIP run, and --model
            hf:DIR; AutoModelForImageClassification and pipeline("image-classification") for a timm classifier);
            open_clip: open_clip_model.safetensors + open_clip_config.json (open_clip "local-dir:DIR");
            onnx, openvino: one graph from uint8 crops to scores and embedding, with pipeline.json.
        out: The folder to write.
        overwrite: Replace an existing output.
    """

    _positional: ClassVar[tuple[str, ...]] = ("run",)
    _required: ClassVar[tuple[str, ...]] = ("run", "format", "out")

    run: str | None = None
    format: Literal["hf", "open_clip", "onnx", "openvino"] | None = None
    out: str | None = None
    overwrite: bool = False


@dataclass(kw_only=True)
class BenchEnginesConfig(Checked, ModelOptions, LabelOptions):
    """Everything `pictag bench-engines` takes.

    Attributes:
        images: The images to time on: a folder of your own, or any source.
        limit: Images to use (the first ones of the source).
        batch_size: Images per forward pass.
        rounds: Passes over the images per engine and precision, taking turns; the best pass counts.
        engines: Comma-separated engines to time, e.g. torch,openvino (every installed one when unset).
        precision: Only this precision (fp32, bf16 where the CPU has it, and int8 when unset).
        calibration_images: Images that calibrate int8 (at most half of them); agreement with torch fp32 is measured
            on the others.
        labels: Labels to measure top-1 agreement over (CLIP-family models); nearest neighbours when unset.
    """

    _positional: ClassVar[tuple[str, ...]] = ("images",)
    _required: ClassVar[tuple[str, ...]] = ("images",)
    _at_least: ClassVar[dict[str, int]] = {"limit": 1, "batch_size": 1, "rounds": 1, "calibration_images": 1}

    images: str | None = None
    limit: int = 256
    batch_size: int = 32
    rounds: int = 3
    engines: str | None = None
    precision: Literal["fp32", "bf16", "int8"] | None = None
    calibration_images: int = 128


@dataclass(kw_only=True)
class SplitsConfig:
    """Everything `pictag splits` takes.

    Attributes:
        data: The images to split: a folder of <class>/ folders, or a table of path,label.
        out: The CSV to write: path,class,id,split, one row per image, paths relative to the CSV's folder
            (train --splits and evaluate --splits read it); the resolved config goes beside it.
        ratios: train,val,test fractions of each class's images, met as far as whole IDs allow; they sum to 1.
        by: id: each ID (one physical object) goes to one split, within every class; class: whole classes go to one
            split (open-set evaluation, as metric-learning benchmarks do: no test object or class is trained on).
        id_pattern: Regular expression with a group named id, searched in each file name without its extension
            (default: the name before its last underscore, {ID}_{seq}). Files it does not match are left out and
            reported.
        min_size: Leave out, and report, every ID with an image whose shorter side is below this many pixels.
        classes: Keep only these classes (comma-separated).
        label_column: Column of labels in a table.
        seed: Seed of the shuffle of IDs (or classes).
        overwrite: Replace an existing CSV.
    """

    _positional: ClassVar[tuple[str, ...]] = ("data",)
    _required: ClassVar[tuple[str, ...]] = ("data", "out")

    data: str | None = None
    out: str | None = None
    ratios: str = "0.7,0.15,0.15"
    by: Literal["id", "class"] = "id"
    id_pattern: str | None = None
    min_size: int | None = None
    classes: list[str] | str | None = None
    label_column: str = "label"
    seed: int = 0
    overwrite: bool = False


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
        label_column: Column of labels in a table.
        examples: Queries shown in retrievals.png.
        seed: Seed of the choice of the queries shown.
    """

    _positional: ClassVar[tuple[str, ...]] = ("model",)
    _at_least: ClassVar[dict[str, int]] = {"examples": 1}

    data: str | None = None
    splits: str | None = None
    query: str | None = None
    gallery: str | None = None
    recall_at: str = "1,5"
    out: str | None = None
    label_column: str = "label"
    examples: int = 8
    seed: int = 0


__all__ = [
    "BenchEnginesConfig",
    "CalibrateConfig",
    "ClassifyConfig",
    "EmbedConfig",
    "ExportConfig",
    "ExecutorOptions",
    "EngineOptions",
    "EvaluateConfig",
    "FewshotConfig",
    "FewshotEvalConfig",
    "FinetuneConfig",
    "GalleryOptions",
    "IndexConfig",
    "IndexEmbeddingsConfig",
    "LabelmeCropsConfig",
    "ModelOptions",
    "ModelsConfig",
    "ProductOptions",
    "ResumableOutput",
    "RuntimeOptions",
    "SearchConfig",
    "SourceOptions",
    "SplitsConfig",
    "TrainConfig",
    "VerifyConfig",
]
