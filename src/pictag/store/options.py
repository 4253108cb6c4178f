"""The configs of the commands on embedding stores: embed, calibrate, search and index-embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pictag.config import Checked
from pictag.data.options import GalleryOptions, LabelOptions, SourceOptions
from pictag.distributed.options import ExecutorOptions
from pictag.models.options import EngineOptions, ModelOptions, StoreModelOptions
from pictag.pipeline.options import ResumableOutput, RuntimeOptions


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

    _out: ClassVar[str] = "folder"
    _required: ClassVar[tuple[str, ...]] = ("source", "out")

    dtype: Literal["float16", "float32"] = "float16"
    labelled: bool = False
    label_column: str = "label"


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

    _out: ClassVar[str] = "file"
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

    _out: ClassVar[str] = "file"
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
