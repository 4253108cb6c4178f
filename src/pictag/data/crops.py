"""Records to the uint8 crops a model takes: the decode rule every image path shares, and the one dataset that
reads images through it.

    decoder = Decoder(preprocess, transform, max_pixels)    # Record -> (H, W, 3) uint8, or DecodeError
    images = DecodedImages(shards, views, decoder, seed=seed)   # item (position, epoch) -> {"crop", "error", ...}

The batch runner (its units in order, `pictag.pipeline.runner.crop_batches`), training, the frozen-feature cache
and product tables (every view of every product, the flip TTA, fusion's training crops) all read through
`DecodedImages`. The bytes come from the source's shards (local files by descriptor, anything else through
fsspec), the size limits are the same, and an image that cannot be read or decoded is an error item, reported
with its key, never a failed batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from pictag.data.decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pictag.data.fast_decode import Decode, decode_crop
from pictag.data.sources import Record, Shard
from pictag.errors import PictagError
from pictag.models.preprocess import Preprocess


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of one image in one epoch: the same in every worker, run and resume."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + position) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Decoder:
    """A record's bytes to a (height, width, 3) uint8 crop.

    Attributes:
        preprocess: The model's preprocessing: its eval crop, unless `transform` is given.
        transform: A decoded RGB image to a crop (a training transform, drawing from a seeded generator); None for
            the eval crop.
        max_pixels: Larger images are refused as decompression bombs.
        max_aspect_ratio: Images longer than this many times their width (or wider) are refused.
        decode: "exact" or "fast" (`pictag.data.fast_decode`; the eval crop only).
    """

    preprocess: Preprocess
    transform: Callable | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    decode: Decode = "exact"

    def __call__(self, record: Record, seed: int = 0) -> np.ndarray:
        """The crop of `record`; a `transform` draws from a generator seeded with `seed`.

        Raises:
            DecodeError: a record that could not be read, or bytes that are not a decodable image within the limits.
        """
        if record.data is None:
            raise DecodeError(record.error or "unreadable record")
        if self.transform is None:
            return decode_crop(record.data, self.preprocess, self.max_pixels, self.max_aspect_ratio, self.decode)
        # A training transform knows the decode size it needs; the eval crop is the preprocessing's own.
        min_size = getattr(self.transform, "min_decode_size", self.preprocess.min_decode_size)
        image = decode_image(record.data, min_size, self.max_pixels, self.max_aspect_ratio)
        # torchvision's random transforms draw from torch's global generator: fork it, so this process's own
        # random state (dropout in the main process when workers=0) is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)


def read_record(shards: Sequence[Shard], ref: tuple[int, int]) -> Record:
    """The `Record` at `ref` (shard, position in shard), read on its own."""
    shard, offset = ref
    return next(iter(shards[shard].slice(offset, offset + 1).read()))


@dataclass
class DecodedImages(Dataset):
    """Images read by position and decoded in DataLoader workers: the one dataset every image path reads through.

    An item is a position, or (position, epoch) from `pictag.train.data.EpochSampler`. A DataLoader fetches a
    batch's items together (`__getitems__`), and a run of them at consecutive positions of one shard is read with
    one open and one pass, in storage order: the batch runner's units stream as fast as a plain read of the shard,
    and training's shuffled positions cost one small read each.

    Each item is {"index": position, "view": (shard, position in shard) or None, "key", "label", "text" (the
    record's, unless `fields` gives them), <each of `fields`>, "crop": (H, W, 3) uint8 tensor or None, "error":
    (key, why) or None}: an image that cannot be read or decoded has no crop and says why; a position without an
    image has the black placeholder crop. A shard that fails to read at all (a `PictagError`: a corrupt index, say)
    makes the batch one item, {"failure": its one line}, for the consumer to stop on in its own process.

    Attributes:
        shards: Where the images are.
        views: Each position's images, as (shard, position in shard). Of several, the first, or with `random_view`
            one drawn from (seed, epoch, position), so that a resumed run draws the same; none: the placeholder.
            Any sequence: the runner's is computed from its units' sizes, not stored per image.
        decoder: Bytes to crops.
        seed: Mixed into every image's augmentation seed.
        random_view: Draw one of a position's views instead of taking the first.
        fields: Values per position carried beside the crop ({"label": labels, "text": texts}).
    """

    shards: Sequence[Shard]
    views: Sequence[Sequence[tuple[int, int]]]
    decoder: Decoder
    seed: int = 0
    random_view: bool = False
    fields: Mapping[str, Sequence] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, item: tuple[int, int] | int) -> dict:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: Sequence[tuple[int, int] | int]) -> list[dict]:
        wanted = [self._wanted(item) for item in items]
        out: list[dict] = []
        try:
            for run in _runs(wanted):
                out += self._read(run)
        except PictagError as exc:
            # Raised in a worker, it would reach the main process with the worker's traceback inside its message
            # (DataLoader wraps it); sent as data it stays the one line the user should see.
            return [{"failure": str(exc)}]
        return out

    def _wanted(self, item: tuple[int, int] | int) -> tuple[int, int, tuple[int, int] | None]:
        """(position, augmentation seed, the view to read or None)."""
        position, epoch = item if isinstance(item, tuple) else (item, 0)
        refs = self.views[position]
        seed = item_seed(self.seed, epoch, position)
        if not refs:
            return position, seed, None
        return position, seed, tuple(refs[seed % len(refs)] if self.random_view else refs[0])

    def _read(self, run: list[tuple[int, int, tuple[int, int] | None]]) -> list[dict]:
        position, _, view = run[0]
        if view is None:
            return [self._item(position, None, None, torch.zeros(*self.decoder.preprocess.size, 3, dtype=torch.uint8))]
        shard, offset = view
        records = self.shards[shard].slice(offset, offset + len(run)).read()
        items = []
        for (position, seed, view), record in zip(run, records, strict=True):
            try:
                crop = torch.from_numpy(self.decoder(record, seed))
            except DecodeError as exc:
                items.append(self._item(position, view, record, None, (record.key, str(exc))))
            else:
                items.append(self._item(position, view, record, crop))
        return items

    def _item(self, position, view, record: Record | None, crop, error=None) -> dict:
        return {
            "index": position,
            "view": view,
            "key": record.key if record else None,
            "label": record.label if record else None,
            "text": record.text if record else None,
            **{name: values[position] for name, values in self.fields.items()},
            "crop": crop,
            "error": error,
        }


def batch_failure(items: Sequence[dict]) -> str | None:
    """The one line of a batch that `DecodedImages` could not read (its failure item), else None."""
    return items[0]["failure"] if items and "failure" in items[0] else None


def _runs(wanted: list[tuple[int, int, tuple[int, int] | None]]) -> Iterator[list]:
    """The items cut into runs at consecutive positions of one shard, in order; an item without a view runs alone."""
    run: list = []
    for item in wanted:
        view = item[2]
        if run and view is not None and run[-1][2] is not None:
            shard, offset = run[-1][2]
            if view == (shard, offset + 1):
                run.append(item)
                continue
        if run:
            yield run
        run = [item]
    if run:
        yield run
