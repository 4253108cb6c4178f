"""P×K batches for metric learning: each batch holds P classes with K images of each.

A loss that compares images of one class with the others (ArcFace's margin, triplets, contrastive) learns most when
every batch has several images of each class it holds. `PKSampler` yields the positions of one rank's batches, P×K
at a time, so the engine's DataLoader (batch size P×K) cuts exactly these batches.

An epoch visits every image once where the counts allow it: each class's images are shuffled and cut into chunks of
K, the last chunk filled up with other images of the class, and a class with fewer than K images is drawn with
replacement (reported once). Batches take P chunks of different classes, those with the most chunks left first
(ties broken at random), which empties every class in the fewest batches; when fewer than P classes have chunks
left, fresh chunks of the others fill the batch. The order is a function of (seed, epoch) only, and rank r takes
every world-th batch from r (the list padded with its own first batches), so each DDP rank draws its own batches
and a run continued mid-epoch (`start`) sees what an uninterrupted one does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from pictag.errors import PictagError

log = logging.getLogger(__name__)


class PKSampler(Sampler):
    """One rank's P×K batches of an epoch, flattened; yields (position, epoch) like `EpochSampler`.

    Args:
        labels: Each image's class index.
        classes_per_batch: P; when None, as many classes as `batch_size` holds groups of K (at least one, at most
            every class), so the batch stays the size asked for whatever the number of classes.
        samples_per_class: K.
        seed: Seed of the order (mixed with the epoch).
        rank: This process's rank.
        world: The number of ranks.
        names: Class names, for the report of classes with fewer than K images.
        batch_size: The images a batch should hold when P is not given.

    Attributes:
        batch_size: P × K, the DataLoader's batch size.
        short: Names (or indices) of the classes with fewer than K images, drawn with replacement.

    Raises:
        PictagError: P or K below 1, or P larger than the number of classes.
    """

    def __init__(
        self,
        labels: Sequence[int],
        classes_per_batch: int | None,
        samples_per_class: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        names: Sequence[str] | None = None,
        batch_size: int = 32,
    ):
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        present = torch.unique(self.labels).tolist()
        self.members = {c: (self.labels == c).nonzero().flatten() for c in present}
        # Never every class by default: 81 classes x 4 images of 224 px made a 324-image batch that the kernel's
        # OOM killer ended at 19 GB of RSS.
        p = (
            min(max(batch_size // samples_per_class, 1), len(present))
            if classes_per_batch is None
            else classes_per_batch
        )
        if samples_per_class < 1 or p < 1:
            raise PictagError(
                f"--classes-per-batch and --samples-per-class must be at least 1, not {p} and {samples_per_class}"
            )
        if p > len(present):
            raise PictagError(
                f"--classes-per-batch {p}: the training images have {len(present)} classes; use at most {len(present)}"
            )
        self.p, self.k, self.seed, self.rank, self.world = p, samples_per_class, seed, rank, world
        self.batch_size = p * samples_per_class
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None
        self.short = [names[c] if names else c for c, m in self.members.items() if len(m) < self.k]
        if self.short and rank == 0:
            shown = ", ".join(map(str, self.short[:10])) + (" ..." if len(self.short) > 10 else "")
            log.warning(
                "%d class(es) have fewer than --samples-per-class %d images and are drawn with replacement: %s",
                len(self.short),
                self.k,
                shown,
            )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _chunk(self, members: torch.Tensor, generator: torch.Generator) -> list[int]:
        """K random images of a class: without replacement when it has K, with it otherwise."""
        if len(members) >= self.k:
            return members[torch.randperm(len(members), generator=generator)[: self.k]].tolist()
        return members[torch.randint(len(members), (self.k,), generator=generator)].tolist()

    def batches(self) -> list[list[int]]:
        """Every batch of this epoch (all ranks'), each P×K positions grouped by class."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        classes = list(self.members)
        chunks: list[list[list[int]]] = []
        for c in classes:
            members = self.members[c]
            order = members[torch.randperm(len(members), generator=generator)].tolist()
            cut = [order[i : i + self.k] for i in range(0, len(order), self.k)]
            missing = self.k - len(cut[-1])
            if missing:  # the last chunk is filled with other images of its class (all of them, if it has so few)
                rest = torch.tensor([i for i in order if i not in cut[-1]] or order)
                cut[-1] += rest[torch.randint(len(rest), (missing,), generator=generator)].tolist()
            chunks.append(cut)
        left = torch.tensor([len(cut) for cut in chunks], dtype=torch.float64)
        count = max(-(-int(left.sum()) // self.p), int(left.max()))
        out = []
        for _ in range(count):
            # The classes with the most chunks left, ties in a random order (a random fraction never passes a count).
            chosen = (left + torch.rand(len(classes), generator=generator, dtype=torch.float64)).topk(self.p).indices
            batch = []
            for c in chosen.tolist():
                batch += chunks[c].pop() if chunks[c] else self._chunk(self.members[classes[c]], generator)
            left[chosen] = (left[chosen] - 1).clamp(min=0)
            out.append(batch)
        self._cache = (self.epoch, out)
        return out

    def share(self) -> list[int]:
        """This rank's positions of this epoch, batch after batch, before `start` is skipped."""
        batches = list(self.batches())
        padded = -(-len(batches) // self.world) * self.world
        batches += batches[: padded - len(batches)]
        return [i for batch in batches[self.rank :: self.world] for i in batch]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self.share()[self.start :]])

    def __len__(self) -> int:
        return len(self.share()) - self.start
