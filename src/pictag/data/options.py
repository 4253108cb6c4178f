"""The options of the data layer: where the images are (`SourceOptions`), product tables, labels and galleries, and
the configs of the commands that only prepare data: splits, labelme-crops, index.

Plain data: this module imports no image or table library, so `pictag --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pictag.config import Checked
from pictag.data.limits import DEFAULT_MAX_PIXELS


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
class ProductOptions:
    """products (a table of id, label and text fields, with images by id: --task fusion)

    Attributes:
        images: Folder of the products' images, found by id: <id>.jpg|.jpeg|.png|.webp, then <id>_*.* (several
            views of one product).
        id_column: Id column of a product table (id when unset).
        label_column: Label column of a product table (categories, else label, when unset).
        text_columns: Text columns of a product table, comma-separated, joined in order (title,description, else
            text, when unset).
        multi_image: A product with several images: first; random (one view drawn per training step; validation
            and inference take the mean of their embeddings); or mean_pool (the mean of their embeddings).
        missing_image: A product without an image: placeholder (a black image, counted and reported) or error.
    """

    _renamed: ClassVar[dict[str, str]] = {
        "id_col": "id_column",
        "label_col": "label_column",
        "text_cols": "text_columns",
    }

    images: str | None = None
    id_column: str | None = None
    label_column: str | None = None
    text_columns: str | None = None
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

    _out: ClassVar[str] = "file"
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

    _out: ClassVar[str] = "folder"
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
class IndexConfig:
    """Everything `pictag index` takes.

    Attributes:
        tar: An uncompressed .tar file.
        out: Index path (default: beside the tar, NAME.index.parquet).
    """

    _out: ClassVar[str] = "file"
    _positional: ClassVar[tuple[str, ...]] = ("tar",)
    _required: ClassVar[tuple[str, ...]] = ("tar",)

    tar: str | None = None
    out: str | None = None
