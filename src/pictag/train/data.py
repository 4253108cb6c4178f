"""Training data: labelled images split into train and validation, read and augmented in DataLoader workers.

Images are read through the source's shards (`pictag.data.open_source(uri, labelled=True)`: a folder of classes,
in place or in a tar, or a table of path, label and text), decoded and cropped by the encoder's own transforms
through `pictag.data.crops.DecodedImages`, the dataset the batch runner reads through too; training asks it for
positions in a shuffled order.

Exact resume needs the data of step k to be a function of the seed and k alone, whatever the workers and however
often the run was interrupted: the sampler's order depends only on (seed, epoch), and each image's augmentation
draws from a generator seeded by (seed, epoch, position), never from a worker's running random state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pictag.data.crops import DecodedImages, Decoder, batch_failure
from pictag.data.decode import DEFAULT_MAX_PIXELS
from pictag.data.sources import Shard, open_source
from pictag.data.splits import column_split, kfold_split, stratified_split
from pictag.errors import PictagError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Labelled images of one side of training.

    Attributes:
        shards: The source's shards.
        refs: (shard, position in shard) of each image.
        keys: Each image's key in its source.
        labels: Each image's class, an index into `TrainData.classes`.
        texts: Each image's text (a table's text column), else None.
    """

    shards: tuple[Shard, ...]
    refs: tuple[tuple[int, int], ...]
    keys: tuple[str, ...]
    labels: tuple[int, ...]
    texts: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.refs)

    def subset(self, positions: Sequence[int]) -> Split:
        """The images at `positions`, in that order."""

        def pick(values):
            return tuple(values[i] for i in positions)

        return Split(self.shards, pick(self.refs), pick(self.keys), pick(self.labels), pick(self.texts))


@dataclass
class TrainData:
    """What a task is built from and trained on.

    Attributes:
        classes: Class names, sorted; labels index them.
        train: The training images.
        val: The validation images, or None (then the best model is the last epoch's).
        skipped: (key, reason) of images that could not be decoded, filled in as they are met.
        resuming: The weights will come from a file (resume, --init-from): heads need not start from prototypes.
        val_classes: The classes validation labels index, when validation holds classes training lacks (a metric
            learning task's held-out classes); None when they index `classes`.
    """

    classes: list[str]
    train: Split
    val: Split | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resuming: bool = False
    val_classes: list[str] | None = None

    def facts(self) -> dict:
        """What the data says of itself that is kept with the best model's metrics (best/pictag.json, cv.json)."""
        return {}


def read_split(
    uri: str, *, label_column: str = "label", text_column: str | None = None
) -> tuple[Split, list[str], list[dict]]:
    """A labelled source as a `Split` labelled by its own sorted classes, the classes, and each record's meta.

    Raises:
        PictagError: unreadable source, an image without a label, an empty class folder.
    """
    source = open_source(uri, labelled=True, label_column=label_column, text_column=text_column)
    classes = list(source.classes)
    shards = tuple(source.shards())
    refs, keys, labels, texts, metas = [], [], [], [], []
    for s, shard in enumerate(shards):
        prefix = getattr(shard, "prefix", "")
        for i, (path, annotation) in enumerate(zip(shard.paths(), shard.annotations, strict=True)):
            refs.append((s, i))
            keys.append(prefix + path)
            labels.append(classes.index(annotation.label))
            texts.append(annotation.text)
            metas.append(annotation.meta)
    return Split(shards, tuple(refs), tuple(keys), tuple(labels), tuple(texts)), classes, metas


def load_train_data(cfg, open_set_val: bool = False) -> TrainData:
    """Training and validation images of a `TrainConfig`: --splits, --val, --val-split, --folds/--fold, or none.

    Args:
        cfg: The `TrainConfig`.
        open_set_val: Validation may hold classes that training lacks (`Task.open_set_val`).

    Raises:
        PictagError: fewer than two classes, validation classes unknown to training, or a split that cannot be
            made (a class too small, a fold out of range, an empty train split).
    """
    if cfg.splits:
        return _from_splits(cfg, open_set_val)
    split, classes, metas = read_split(cfg.data, label_column=cfg.label_column, text_column=cfg.text_columns)
    if len(classes) < 2:
        raise PictagError(
            f"{cfg.data} has {len(classes)} class ({', '.join(classes) or 'none'}): training a classifier needs at "
            "least two classes (<class>/*.jpg folders, or label values)"
        )
    val = None
    if cfg.val:
        val, val_classes, _ = read_split(cfg.val, label_column=cfg.label_column, text_column=cfg.text_columns)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise PictagError(
                f"--val {cfg.val} has classes that {cfg.data} lacks: {', '.join(unknown)}: validate on the "
                "training classes only"
            )
        # Relabel into the training classes' indices.
        val = Split(val.shards, val.refs, val.keys, tuple(classes.index(val_classes[i]) for i in val.labels), val.texts)
    elif cfg.val_split:
        train_pos, val_pos = stratified_split(split.labels, cfg.val_split, cfg.seed, classes)
        split, val = split.subset(train_pos), split.subset(val_pos)
    elif cfg.folds or cfg.fold is not None:
        if cfg.folds:
            train_pos, val_pos = kfold_split(split.labels, cfg.folds, int(cfg.fold or 0), cfg.seed, classes)
        elif metas and "fold" in metas[0]:
            train_pos, val_pos = column_split([m["fold"] for m in metas], cfg.fold)
        else:
            raise PictagError("--fold needs --folds K, or a table with a 'fold' column")
        split, val = split.subset(train_pos), split.subset(val_pos)
    return TrainData(classes, split, val)


def _from_splits(cfg, open_set_val: bool) -> TrainData:
    """The train and val rows of a splits CSV (`pictag splits`), whose images lie in the DATA folder."""
    from pictag.data.splits import read_splits

    given = [o for o, v in (("--val", cfg.val), ("--val-split", cfg.val_split), ("--folds", cfg.folds)) if v]
    if given or cfg.fold is not None:
        raise PictagError(f"--splits names the validation images: drop {given[0] if given else '--fold'}")
    table = read_splits(cfg.splits, root=cfg.data)  # refuses a CSV of another folder, missing columns, empty cells
    table.select("train")  # refuses an empty train split in one line
    split, classes, metas = read_split(cfg.splits, label_column="class", text_column=cfg.text_columns)

    def side(name: str) -> tuple[Split | None, list[str]]:
        positions = [i for i, meta in enumerate(metas) if meta.get("split") == name]
        if not positions:
            return None, []
        part = split.subset(positions)
        names = sorted({classes[label] for label in part.labels})
        labels = tuple(names.index(classes[label]) for label in part.labels)
        return Split(part.shards, part.refs, part.keys, labels, part.texts), names

    train, train_classes = side("train")
    if len(train_classes) < 2:
        raise PictagError(
            f"the train split of {cfg.splits} has {len(train_classes)} class ({', '.join(train_classes)}): training "
            "needs at least two classes"
        )
    val, val_classes = side("val")
    if val is None or set(val_classes) <= set(train_classes):
        if val is not None:  # relabel into the training classes' indices
            val = Split(
                val.shards,
                val.refs,
                val.keys,
                tuple(train_classes.index(val_classes[i]) for i in val.labels),
                val.texts,
            )
        return TrainData(train_classes, train, val)
    if not open_set_val:
        unknown = sorted(set(val_classes) - set(train_classes))
        raise PictagError(
            f"the val split of {cfg.splits} has classes its train split lacks ({', '.join(unknown[:5])}): a "
            f"{cfg.task} validates on the training classes (split by ID, not by class), or use --task arcface"
        )
    return TrainData(train_classes, train, val, val_classes=val_classes)


def split_images(split: Split, transform, preprocess, seed: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImages:
    """Images of a split as uint8 crops, with their labels and texts; an item is (position, epoch) from
    `EpochSampler`.

    Args:
        split: The images.
        transform: A decoded RGB image to a (H, W, 3) uint8 array: the encoder's train transform, or its eval
            crop (`Preprocess.crop`).
        preprocess: The encoder's preprocessing (the placeholder's size, the eval crop's decode size).
        seed: Mixed into every image's augmentation seed.
        max_pixels: Larger images are refused as decompression bombs.
    """
    return DecodedImages(
        split.shards,
        [(ref,) for ref in split.refs],
        Decoder(preprocess, transform, max_pixels),
        seed=seed,
        fields={"label": split.labels, "text": split.texts},
    )


def collate(items: list[dict], size: tuple[int, int]) -> dict:
    """Stack the readable items of a batch; the unreadable ones travel as (key, reason) in "errors".

    Raises:
        PictagError: a shard that could not be read at all (`DecodedImages`' failure item).
    """
    if (failure := batch_failure(items)) is not None:
        raise PictagError(failure)
    good = [item for item in items if item["crop"] is not None]
    images = torch.stack([item["crop"] for item in good]) if good else torch.empty(0, *size, 3, dtype=torch.uint8)
    return {
        "images": images,
        "labels": torch.tensor([item["label"] for item in good], dtype=torch.long),
        "texts": [item["text"] for item in good],
        "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
        "errors": [item["error"] for item in items if item["crop"] is None],
    }


class CachedRows(Dataset):
    """The engine's items of a split whose features are cached (`pictag.train.features`): positions and labels only,
    for a task that reads its features by position; an item is (position, epoch) from `EpochSampler`.

    Args:
        split: The split.
        unreadable: {position: (key, why)} of the images the cache has no row of: reported as `split_images` reports
            an image it cannot decode.
    """

    # Items cost nothing to make: worker processes would cost more than them (see `loader`).
    in_process = True

    def __init__(self, split: Split, unreadable: dict[int, tuple[str, str]] | None = None):
        self.split, self.unreadable = split, unreadable or {}

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int] | int) -> dict:
        position = item[0] if isinstance(item, tuple) else item
        out = {"index": position, "label": self.split.labels[position], "text": self.split.texts[position]}
        if position in self.unreadable:
            return {**out, "crop": None, "error": self.unreadable[position]}
        return {**out, "crop": torch.empty(0, 0, 3, dtype=torch.uint8), "error": None}


class EpochSampler(Sampler):
    """Seeded order of one rank's share of a split, a function of (seed, epoch) only; yields (position, epoch).

    Like `DistributedSampler`, the order is padded with its own first positions to a multiple of the ranks, and
    rank r takes every world-th position from r. `balance` draws classes evenly, with replacement, as many draws
    as images. `start` skips the first positions of the share (resume mid-epoch).
    """

    def __init__(
        self,
        labels: Sequence[int],
        seed: int,
        *,
        shuffle: bool = True,
        balance: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        self.labels, self.seed, self.shuffle, self.balance = list(labels), seed, shuffle, balance
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def share(self) -> list[int]:
        """This rank's positions of this epoch, in order, before `start` is skipped."""
        n = len(self.labels)
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        if self.balance:
            counts = torch.bincount(torch.tensor(self.labels))
            weights = 1.0 / counts[torch.tensor(self.labels)].double()
            order = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        elif self.shuffle:
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        padded = -(-n // self.world) * self.world
        order += order[: padded - n]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self.share()[self.start :]])

    def __len__(self) -> int:
        return -(-len(self.labels) // self.world) - self.start


def loader(
    split: Split,
    transform,
    preprocess,
    sampler: EpochSampler,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    drop_last: bool,
    pin_memory: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    dataset: Dataset | None = None,
) -> DataLoader:
    """A DataLoader of `split` in `sampler`'s order, decoding and cropping in `workers` processes.

    `dataset` replaces the split's images read from its source (a task's own items, see `Task.dataset`); one
    marked `in_process` is read without worker processes.
    """
    if getattr(dataset, "in_process", False):
        workers = 0
    return DataLoader(
        dataset if dataset is not None else split_images(split, transform, preprocess, seed, max_pixels),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=partial(collate, size=preprocess.size),
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def check_folder(path: str) -> None:
    """Refuse a path that does not exist before a source is opened on it (the message names the option)."""
    if "://" not in path and not Path(path).exists():
        raise PictagError(f"{path} does not exist: give a folder of <class>/*.jpg or a table of path,label")


@torch.no_grad()
def embed_split(
    split: Split,
    encoder,
    *,
    workers: int = 0,
    batch_size: int = 64,
    skipped: list | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) on the CPU, labels (N,)) of a split's eval crops; unreadable images go to `skipped`."""
    preprocess = encoder.preprocess
    images = DataLoader(
        split_images(split, preprocess.crop, preprocess, 0, max_pixels),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(collate, size=preprocess.size),
    )
    chunks, labels = [torch.empty(0, encoder.embed_dim)], []
    for batch in images:
        if skipped is not None:
            skipped += batch["errors"]
        if len(batch["labels"]):
            chunks.append(encoder.encode_image(preprocess.normalize(batch["images"].to(encoder.device))).cpu())
            labels.append(batch["labels"])
    return torch.cat(chunks), torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
