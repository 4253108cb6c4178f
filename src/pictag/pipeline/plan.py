"""Units of work: a batch job is the same list of units every time it is planned, so a rerun can tell what is done.

A unit is a source shard, or a key range of one when the shard is larger than the unit size. Its id names the
shard and range ("zip1.tar[0:1000]:0-500"), so a plan depends only on the source and the unit size, never on
how many workers or machines run it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from pictag.data.sources import Shard, Source
from pictag.errors import PictagError
from pictag.options import DEFAULT_UNIT_SIZE


@dataclass(frozen=True)
class Unit:
    """One unit of work.

    Attributes:
        ordinal: Position in the plan; parts are named after it, so committed parts list in source order.
        id: Stable name of the records it covers.
        shard: What reads them (picklable; holds locations, never bytes). None for units of an embedding store.
        size: Records in the unit.
    """

    ordinal: int
    id: str
    shard: Shard | None
    size: int

    @property
    def part_name(self) -> str:
        """The file name of the unit's committed part: its ordinal (for order) and a digest of its id (for identity)."""
        return f"part-{self.ordinal:06d}-{hashlib.sha1(self.id.encode()).hexdigest()[:8]}.parquet"


def plan_units(source: Source, unit_size: int = DEFAULT_UNIT_SIZE) -> list[Unit]:
    """Split a source's shards into units of at most `unit_size` records, in source order.

    Raises:
        PictagError: a unit size below 1.
    """
    if unit_size < 1:
        raise PictagError(f"--unit-size must be at least 1, not {unit_size}")
    units: list[Unit] = []
    for shard in source.shards():
        n = len(shard)
        pieces = [shard] if n <= unit_size else [shard.slice(a, min(a + unit_size, n)) for a in range(0, n, unit_size)]
        units += [Unit(len(units) + i, piece.name, piece, len(piece)) for i, piece in enumerate(pieces)]
    return units


def plan_digest(units: Sequence[Unit]) -> str:
    """A short hash of a plan: it changes when the source's records or the unit size do."""
    h = hashlib.sha1()
    for unit in units:
        h.update(f"{unit.id}\0{unit.size}\n".encode())
    return h.hexdigest()[:16]
