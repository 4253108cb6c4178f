"""Product tables: one row per product with an id, a label and text fields, and the product's images found by id.

    products = read_products("train.csv", images="images/")   # prints the schema it chose
    products.ids, products.labels, products.texts, products.images   # images: the paths of each product
    source = open_products("train.csv", images="images/")    # the same table as a `Source` of its images
    source.products, source.shards(), source.views           # the table read; its records; each product's records

A product table is a source like any other (`open_source("train.csv", images="images/")` opens it): its records
are every image view of every product, in table order, each keyed by its path and carrying its product's label,
text and id, read from the source's shards by the one decode path.

The schema is inferred from the column names, each part overridable: the id is `id`; the label `categories`, else
`label`; the text `title` + `description`, else `text`. A product's text is its text fields in order, each
stripped, empty and NaN values dropped, joined with spaces. Its images are `<id>.jpg|.jpeg|.png|.webp` in the images
folder, then `<id>_*.*` (several views of one product), in name order.

Product images as model inputs are shared by the fusion task's stage-1 embedding cache and by classification of
product tables, so that training and inference see a product's images the same way: every view is decoded by the
one decode dataset (`pictag.data.crops.DecodedImages` over the source's shards and views, local files or fsspec
URLs), a product without an image is one black view (the placeholder), an unreadable file is replaced by the
placeholder and reported, and `pool_views` turns a product's views into one embedding (the first view, or their
mean).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pictag.data._io import display_name, filesystem, is_url, join
from pictag.data.crops import DecodedImages, Decoder, batch_failure
from pictag.data.decode import DEFAULT_MAX_PIXELS
from pictag.data.labelled import Annotation
from pictag.data.sources import FileShard, Shard, Source
from pictag.errors import PictagError

ID_COLUMNS = ("id",)
LABEL_COLUMNS = ("categories", "label")
TEXT_COLUMNS = (("title", "description"), ("text",))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FOLD_COLUMN = "fold"
# Image views per shard: the size `open_source` gives its largest shards.
_SHARD_VIEWS = 1000


@dataclass(frozen=True)
class Schema:
    """Which columns a product table's parts come from."""

    id: str
    label: str | None
    text: tuple[str, ...]

    def __str__(self) -> str:
        text = " + ".join(self.text) if self.text else "none (empty texts)"
        return f"id={self.id}, label={self.label or 'none'}, text={text}"


@dataclass(frozen=True)
class Products:
    """A product table, read: one entry per row, in table order.

    Attributes:
        source: The table, for messages.
        schema: The columns used.
        ids: Product ids, as text.
        labels: Labels, as text (None without a label column).
        texts: Each product's text ("" when it has none).
        images: Each product's image paths, best first; empty when none was found.
        folds: The table's fold column, as text, or None.
    """

    source: str
    schema: Schema
    ids: tuple[str, ...]
    labels: tuple[str, ...] | None
    texts: tuple[str, ...]
    images: tuple[tuple[str, ...], ...]
    folds: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def missing(self) -> list[str]:
        """Ids without any image (they get a black placeholder)."""
        return [i for i, found in zip(self.ids, self.images, strict=True) if not found]

    def take(self, rows: Sequence[int]) -> Products:
        """The products of `rows`, in that order."""

        def pick(values: tuple | None) -> tuple | None:
            return None if values is None else tuple(values[r] for r in rows)

        return Products(
            self.source, self.schema, pick(self.ids), pick(self.labels), pick(self.texts), pick(self.images),
            pick(self.folds),
        )  # fmt: skip


def _present(value: Any) -> str | None:
    # pandas-written tables spell a missing value as an empty cell or "nan"; both mean "no text here".
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if not text or text.lower() == "nan" else text


def build_text(values: Sequence[Any]) -> str:
    """A product's text from its text fields, in order: stripped, empty and NaN values dropped, joined with spaces."""
    return " ".join(t for t in map(_present, values) if t is not None)


def infer_schema(
    columns: Sequence[str],
    *,
    id_col: str | None = None,
    label_col: str | None = None,
    text_cols: str | Sequence[str] | None = None,
    need_label: bool = True,
    where: str = "the table",
) -> Schema:
    """The columns of the id, the label and the text fields: those named, else the usual names.

    Raises:
        PictagError: a named column that is not there, or a required one missing (the message lists the columns).
    """
    found = ", ".join(columns)

    def named(option: str, name: str) -> str:
        if name not in columns:
            raise PictagError(f"{option} {name}: {where} has no such column (its columns: {found})")
        return name

    def usual(option: str, candidates: Sequence[str], what: str) -> str:
        for name in candidates:
            if name in columns:
                return name
        raise PictagError(
            f"{where} has no {what} column ({' or '.join(candidates)}); its columns: {found}: name one with {option}"
        )

    ident = named("--id-column", id_col) if id_col else usual("--id-column", ID_COLUMNS, "id")
    label = None
    if label_col:
        label = named("--label-column", label_col)
    elif need_label:
        label = usual("--label-column", LABEL_COLUMNS, "label")
    if text_cols:
        names = [t.strip() for t in text_cols.split(",")] if isinstance(text_cols, str) else list(text_cols)
        text = tuple(named("--text-columns", name) for name in names if name)
    else:
        text = next(
            (tuple(c for c in group if c in columns) for group in TEXT_COLUMNS if set(group) & set(columns)), ()
        )
    return Schema(ident, label, text)


def read_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a CSV or Parquet table, a local file or an fsspec URL; CSV values stay text, so ids like
    007 keep their zeros.

    Raises:
        PictagError: not there, not a table, or unreadable.
    """
    remote = is_url(str(path))
    if remote:
        where = str(path)
        fs, inner = filesystem(where)
        there = fs.isfile(inner)
    else:
        path = Path(path)
        where, there = str(path), path.is_file()
    if not there:
        raise PictagError(f"{where} does not exist: give a CSV or Parquet table of products")
    suffix = Path(where).suffix.lower()
    try:
        with fs.open(inner, "rb") if remote else open(path, "rb") as f:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(f)
                return list(table.column_names), table.to_pylist()
            if suffix in (".csv", ".tsv"):
                import csv

                text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
                reader = csv.DictReader(text, delimiter="\t" if suffix == ".tsv" else ",")
                rows = list(reader)
                return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PictagError(f"cannot read {where} ({' '.join(str(exc).split())}): check the file") from None
    except Exception as exc:  # pyarrow raises its own types for a torn file
        raise PictagError(f"cannot read {where} ({' '.join(str(exc).split())}): check the file") from None
    raise PictagError(f"{where} is not a product table: use .csv, .tsv or .parquet")


class ImageIndex:
    """Finds product images by id in one folder, listed once.

    `<id>.jpg|.jpeg|.png|.webp` comes first (in that order of suffixes), then `<id>_*.*` in name order, so an id
    that is a prefix of another (`12` and `12_3`) never takes the other's file unless it follows the underscore rule.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = str(folder)
        self.exact: dict[str, list[tuple[int, str]]] = {}
        self.views: dict[str, list[str]] = {}
        for name in sorted(self._names(self.folder)):
            stem, dot, suffix = name.rpartition(".")
            if not dot or not stem:
                continue
            rank = IMAGE_SUFFIXES.index(f".{suffix.lower()}") if f".{suffix.lower()}" in IMAGE_SUFFIXES else None
            if rank is not None:
                self.exact.setdefault(stem, []).append((rank, name))
            # Every underscore may end an id: "a_b_1.jpg" is a view of "a" and of "a_b".
            for i, char in enumerate(stem):
                if char == "_" and i:
                    self.views.setdefault(stem[:i], []).append(name)

    @staticmethod
    def _names(folder: str) -> list[str]:
        """The names in `folder`, a local folder or an fsspec URL (its files only)."""
        if is_url(folder):
            fs, inner = filesystem(folder)
            if not fs.isdir(inner):
                raise PictagError(f"--images {folder} is not a folder: give the folder that holds <id>.jpg files")
            return [display_name(e["name"]) for e in fs.ls(inner, detail=True) if e["type"] == "file"]
        if not Path(folder).is_dir():
            raise PictagError(f"--images {folder} is not a folder: give the folder that holds <id>.jpg files")
        return os.listdir(folder)

    def find(self, product_id: str) -> tuple[str, ...]:
        """Paths of the product's images, best first; empty when it has none."""
        exact = [name for _, name in sorted(self.exact.get(product_id, []))]
        names = exact[:1] + [n for n in self.views.get(product_id, []) if n not in exact[:1]]
        if is_url(self.folder):
            return tuple(join(self.folder, n) for n in names)
        return tuple(str(Path(self.folder) / n) for n in names)


def read_products(
    table: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    text_cols: str | Sequence[str] | None = None,
    need_label: bool = True,
    need_text: bool = False,
    missing_image: str = "placeholder",
    quiet: bool = False,
) -> Products:
    """Read a product table and find each product's images; prints the schema first unless `quiet`.

    Args:
        table: CSV or Parquet, one row per product.
        images: The folder of product images (none looked for when None).
        id_col, label_col, text_cols: Override the inferred columns.
        need_label: Refuse a table without a label column (training).
        need_text: Refuse a table without text columns (a fusion model).
        missing_image: "placeholder" (a product without an image gets a black one, counted) or "error".

    Raises:
        PictagError: an empty table, unknown or missing columns, duplicate ids, empty labels, no text columns
            when they are needed, or (with `missing_image="error"`) a product without an image.
    """
    columns, rows = read_table(table)
    where = str(table)
    if not rows:
        raise PictagError(f"{where} is empty (no product rows): give a table with one row per product")
    schema = infer_schema(
        columns, id_col=id_col, label_col=label_col, text_cols=text_cols, need_label=need_label, where=where
    )
    if need_text and not schema.text:
        raise PictagError(
            f"{where} has no text column (title, description or text; its columns: {', '.join(columns)}): a fusion "
            "model needs text; name the columns with --text-cols a,b"
        )
    if not quiet:
        print(f"{where}: {len(rows):,} products; schema {schema}", flush=True)
    ids = tuple(str(_present(r.get(schema.id)) or "") for r in rows)
    empty = [n for n, i in enumerate(ids) if not i]
    if empty:
        raise PictagError(f"{where}: row {empty[0] + 2} has an empty {schema.id}: every product needs an id")
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise PictagError(
            f"{where}: id {dupes[0]} appears more than once ({len(dupes)} duplicates): ids must be unique"
        )
    labels = None
    if schema.label:
        labels = tuple(_present(r.get(schema.label)) or "" for r in rows)
        unlabelled = [i for i, label in zip(ids, labels, strict=True) if not label]
        if unlabelled:
            raise PictagError(
                f"{where}: {len(unlabelled)} product(s) have an empty {schema.label} (e.g. id {unlabelled[0]}): "
                "label them or drop the rows"
            )
    texts = tuple(build_text([r.get(c) for c in schema.text]) for r in rows)
    found: tuple[tuple[str, ...], ...] = tuple(() for _ in ids)
    if images is not None:
        index = ImageIndex(images)
        found = tuple(index.find(i) for i in ids)
        missing = [i for i, f in zip(ids, found, strict=True) if not f]
        if missing and missing_image == "error":
            raise PictagError(
                f"{len(missing)} product(s) have no image in {images} (e.g. id {missing[0]}: looked for "
                f"{missing[0]}.jpg|.jpeg|.png|.webp and {missing[0]}_*.*); drop --missing-image error to use black "
                "placeholders"
            )
    folds = None
    if FOLD_COLUMN in columns:
        folds = tuple(str(_present(r.get(FOLD_COLUMN)) or "") for r in rows)
    return Products(where, schema, ids, labels, texts, found, folds)


def join_products(train: Products, val: Products) -> Products:
    """The training table's products, then the validation table's, as one table (both tables' images are embedded
    and cached together).

    Raises:
        PictagError: an id in both tables (a product validated on would also be trained on).
    """
    both = sorted(set(train.ids) & set(val.ids))
    if both:
        raise PictagError(
            f"{len(both)} id(s) are in both {train.source} and {val.source} (e.g. {both[0]}): a validation product "
            "must not be trained on"
        )
    return Products(
        f"{train.source} + {val.source}",
        train.schema,
        train.ids + val.ids,
        train.labels + val.labels,
        train.texts + val.texts,
        train.images + val.images,
        None,
    )


def view_shards(
    images: Sequence[Sequence[str]],
    annotations: Sequence[Annotation] | None = None,
    name: str = "product images",
) -> tuple[tuple[FileShard, ...], tuple[tuple[tuple[int, int], ...], ...]]:
    """Shards of every product's image files (local paths or fsspec URLs, read as any source's), and each product's
    views in them as (shard, position) for `DecodedImages`; with `annotations` (one per product), each view's record
    carries its product's."""
    paths: list[str] = []
    notes: list[Annotation] = []
    views = []
    for n, product in enumerate(images):
        views.append(tuple(divmod(len(paths) + i, _SHARD_VIEWS) for i in range(len(product))))
        paths.extend(product)
        if annotations is not None:
            notes += [annotations[n]] * len(product)
    bounds = [(a, min(a + _SHARD_VIEWS, len(paths))) for a in range(0, len(paths), _SHARD_VIEWS)]
    shards = tuple(FileShard(f"{name}[{a}:{b}]", ".", tuple(paths[a:b]), tuple(notes[a:b])) for a, b in bounds)
    return shards, tuple(views)


@dataclass(frozen=True)
class ProductSource(Source):
    """A product table as a `Source`: its records are every image view of every product, in table order, each keyed
    by its path and carrying its product's label, text, and meta {"id": the product's id}. A product without an
    image has no record: it is decoded as the black placeholder.

    Attributes:
        uri: The table.
        products: The table, read.
        parts: The shards of the image views.
        views: Each product's records as (shard, position), best first: the views `DecodedImages` reads.
        classes: The labels of a labelled table, sorted.
    """

    uri: str
    products: Products
    parts: tuple[Shard, ...]
    views: tuple[tuple[tuple[int, int], ...], ...]
    classes: tuple[str, ...] = ()

    @classmethod
    def of(cls, products: Products) -> ProductSource:
        """The source of a table read by `read_products` (or joined by `join_products`)."""
        labels = products.labels or (None,) * len(products)
        annotations = [
            Annotation(label, text, {"id": ident})
            for ident, label, text in zip(products.ids, labels, products.texts, strict=True)
        ]
        parts, views = view_shards(products.images, annotations, f"{display_name(products.source)} images")
        return cls(products.source, products, parts, views, tuple(sorted(set(products.labels or ()))))

    def shards(self) -> list[Shard]:
        return list(self.parts)

    def select(self, rows: Sequence[int]) -> ProductSource:
        """The products of `rows` (table positions), in that order, as a source of their own."""
        return ProductSource.of(self.products.take(rows))


def open_products(table: str | os.PathLike, **options: Any) -> ProductSource:
    """Read a product table and find its images (as `read_products`, with the same options), as a `Source`."""
    return ProductSource.of(read_products(table, **options))


def product_shards(target) -> list[Shard]:
    """The shards of `open_source(table, images=DIR, **product_options)`: the source kind "products"."""
    return open_products(target.uri, images=target.images, **target.product_options).shards()


def offsets_of(images: Sequence[Sequence[str]]) -> torch.Tensor:
    """(N + 1,) start of each product's views in the flat list of views (a product without an image has one)."""
    counts = torch.tensor([max(len(paths), 1) for paths in images], dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def _collate(items: list[dict]) -> list[dict]:
    return items


@torch.no_grad()
def embed_views(
    images: ProductSource | Sequence[Sequence[str]],
    encoder,
    *,
    flip: bool = False,
    workers: int = 0,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skipped: list | None = None,
    desc: str = "embedding images",
) -> list[torch.Tensor]:
    """Normalised embeddings (M, D) on the CPU of every view of every product (of a `ProductSource`, or given as
    each product's image paths), in the order of `offsets_of`.

    Returns one tensor, or two with `flip` (the views, then their mirror images: the flip TTA). Placeholders and
    unreadable images get the embedding of the black image; unreadable ones are added to `skipped` as (path, why).
    """
    preprocess = encoder.preprocess
    black = torch.zeros(*preprocess.size, 3, dtype=torch.uint8)
    shards, views = (images.parts, images.views) if isinstance(images, ProductSource) else view_shards(images)
    # One item per view; a product without an image is one item without a view: the placeholder.
    items: list[tuple] = []
    for refs in views:
        items += [(ref,) for ref in refs] or [()]
    dataset = DecodedImages(shards, items, Decoder(preprocess, max_pixels=max_pixels))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    outputs: list[list[torch.Tensor]] = [[] for _ in range(2 if flip else 1)]
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", dynamic_ncols=True, disable=None, leave=False) as bar:
        for items in loader:
            if (failure := batch_failure(items)) is not None:
                raise PictagError(failure)
            for item in items:
                if item["error"] is not None and skipped is not None:
                    skipped.append(item["error"])
            crops = torch.stack([black if item["crop"] is None else item["crop"] for item in items])
            pixels = preprocess.normalize(crops.to(encoder.device))
            outputs[0].append(encoder.encode_image(pixels).cpu())
            if flip:  # crops are (N, H, W, 3): the width is dimension 2
                outputs[1].append(encoder.encode_image(preprocess.normalize(crops.flip(2).to(encoder.device))).cpu())
            bar.update(len(items))
    return [torch.cat(chunks) if chunks else torch.empty(0, encoder.embed_dim) for chunks in outputs]


def pool_views(views: torch.Tensor, offsets: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, D) one embedding per product: its first view ("first"), else the mean of its views' embeddings."""
    if mode == "first":
        return views[offsets[:-1]]
    counts = offsets[1:] - offsets[:-1]
    owner = torch.repeat_interleave(torch.arange(len(counts), device=views.device), counts.to(views.device))
    sums = torch.zeros(len(counts), views.shape[1], dtype=views.dtype, device=views.device).index_add_(0, owner, views)
    return sums / counts.to(views.device, views.dtype)[:, None]
