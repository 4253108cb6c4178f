"""Units of work: a batch job is the same list of units every time it is planned, so a rerun can tell what is done.

A unit is a source shard, or a key range of one when the shard is larger than the unit size. Its id names the
shard and range ("zip1.tar[0:1000]:0-500"), so a plan depends only on the source and the unit size, never on
how many workers or machines run it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from pictag.data.sources import Shard, Source
from pictag.errors import PictagError
from pictag.pipeline.options import DEFAULT_UNIT_SIZE

PLAN_FILE = "_plan.parquet"
PLAN_SCHEMA = pa.schema(
    [("ordinal", pa.int64()), ("id", pa.string()), ("size", pa.int64()), ("part", pa.string()), ("keys", pa.uint64())]
)


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


def keys_hash(keys: Iterable[str]) -> int:
    """An order-free digest of a multiset of keys: equal exactly when the same keys are there (a duplicate counts).

    A sum of 64-bit key digests, so the plan's per-unit values add up to the output's however its rows are ordered
    or split between results and errors.
    """
    return (
        sum(
            int.from_bytes(hashlib.blake2b(k.encode(errors="surrogateescape"), digest_size=8).digest(), "little")
            for k in keys
        )
        % 2**64
    )


def unit_keys(unit: Unit) -> list[str] | None:
    """The keys a unit's records will have, from its shard's listing (no image is read); None when not known."""
    if unit.shard is None:
        return None
    return [getattr(unit.shard, "prefix", "") + path for path in unit.shard.paths()]


def plan_table(units: Sequence[Unit]) -> pa.Table:
    """The plan as a table: ordinal, id, size, part name and the keys' digest (null when not known) of each unit."""
    hashes = []
    for unit in units:
        keys = unit_keys(unit)
        hashes.append(None if keys is None else keys_hash(keys))
    columns = [[u.ordinal for u in units], [u.id for u in units], [u.size for u in units]]
    columns += [[u.part_name for u in units], hashes]
    return pa.table(columns, schema=PLAN_SCHEMA)
