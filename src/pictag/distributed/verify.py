"""`pictag verify OUT`: is an output exactly its plan? Every planned key once, nothing else, no temporary file left.

It reads the plan a run saved (`_plan.parquet` in a store or parts folder; `NAME.plan.parquet` beside a merged file)
and the keys the output holds, results and errors together, and compares them: the count, an order-free digest of
the keys (`pictag.pipeline.plan.keys_hash`), duplicates, parts missing from or foreign to the plan, and temporary
files of attempts that never finished.

Damage is reported, never a traceback: a part that cannot be read (truncated, garbage, no key column, keys that are
not text) is listed as damaged and fails the check; a plan or a merged file that cannot be read is one line. A
results file another tool rewrote with its keys as text (pandas' large strings, categories) is read as such.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pictag.errors import PictagError
from pictag.pipeline.plan import PLAN_FILE, keys_hash
from pictag.storage.files import exists, is_dir, open_location, record_beside
from pictag.storage.parts import ERRORS_FOLDER, PartStore

_SHOWN = 5  # duplicate keys named in the report


@dataclass
class Verification:
    """What `verify` found.

    Attributes:
        out: The output checked.
        units: Units in the plan.
        committed: Units of the plan whose part is committed (all of them once merged).
        planned_keys: Records in the plan.
        rows: Result rows found.
        errors: Error rows found.
        missing: Units of the plan without a part (an interrupted run: --resume finishes it).
        stray: Parts that are not in the plan.
        duplicates: Keys found more than once (at most a few named), and how many there are.
        keys_match: Whether the keys found are exactly the planned keys of the committed units.
        temporaries: Temporary files left by attempts that never finished.
        damaged: Parts that cannot be read, each with why.
        committed_keys: Records planned in the committed units (all the planned ones when none is missing).
    """

    out: str
    units: int = 0
    committed: int = 0
    planned_keys: int = 0
    rows: int = 0
    errors: int = 0
    missing: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    duplicate_count: int = 0
    keys_match: bool = True
    temporaries: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    committed_keys: int | None = None

    @property
    def ok(self) -> bool:
        faults = self.missing or self.stray or self.duplicate_count or self.temporaries or self.damaged
        return not faults and self.keys_match

    def summary(self) -> str:
        unplanned = self.planned_keys - (self.planned_keys if self.committed_keys is None else self.committed_keys)
        lines = [
            f"{self.out}: {'OK' if self.ok else 'FAILED'}",
            f"  units: {self.committed:,} of {self.units:,} committed",
            f"  keys: {self.rows + self.errors:,} found ({self.rows:,} results, {self.errors:,} errors), "
            f"{self.planned_keys:,} planned"
            + (f", {unplanned:,} of them in units without a part" if unplanned else "")
            + f"; {'equal to' if self.keys_match else 'NOT equal to'} the plan's"
            + (" for the committed units" if unplanned else ""),
            f"  duplicated keys: {self.duplicate_count:,}"
            + (f" ({', '.join(self.duplicates)})" if self.duplicates else ""),
            f"  temporary files left: {len(self.temporaries):,}",
        ]
        if self.missing:
            lines.append(f"  units without a part: {len(self.missing):,} (an interrupted run: --resume finishes it)")
        if self.stray:
            lines.append(f"  parts not in the plan: {len(self.stray):,} ({', '.join(self.stray[:_SHOWN])})")
        if self.damaged:
            lines.append(
                f"  damaged parts: {len(self.damaged):,} ({'; '.join(self.damaged[:_SHOWN])}): delete them, then "
                "--resume computes their units again"
            )
        return "\n".join(lines)


def verify_output(out: str | os.PathLike) -> Verification:
    """Check an output (a classify file, an embedding store, or the parts folder of a run) against its plan.

    Raises:
        PictagError: no plan is found for `out` (it was not written by pictag, or by an older version).
    """
    out = os.fspath(out)
    folder = PartStore(out)
    if is_dir(out) and folder.exists(PLAN_FILE):
        return _verify_parts(out, folder, merged_errors="errors.csv")
    in_progress = PartStore(out.rstrip("/") + ".parts")
    if in_progress.exists(PLAN_FILE):
        return _verify_parts(out, in_progress, merged_errors=None)
    parent, name = record_beside(out, ".plan.parquet")
    beside = PartStore(parent)
    if beside.exists(name):
        if not exists(out):
            raise PictagError(
                f"{out} does not exist, but its plan {beside.url(name)} does: the output was deleted or moved; "
                "restore it, or run the job again with --overwrite"
            )
        return _verify_merged(out, beside, name)
    raise PictagError(f"no plan found for {out}: verify checks outputs of pictag classify and embed")


def _verify_parts(out: str, parts: PartStore, merged_errors: str | None) -> Verification:
    plan = _read_plan(parts, PLAN_FILE)
    committed = set(parts.part_names())
    planned = dict(zip(plan.column("part").to_pylist(), range(plan.num_rows)))
    report = Verification(out, units=plan.num_rows, planned_keys=sum(plan.column("size").to_pylist()))
    report.missing = [p for p in planned if p not in committed]
    report.stray = [p for p in sorted(committed) if p not in planned]
    report.committed = plan.num_rows - len(report.missing)
    keys = [_part_keys(parts, name, report) for name in sorted(committed)]
    report.rows = sum(len(k) for k in keys)
    error_parts = set(parts.part_names(errors=True)) & committed
    errors = [_part_keys(parts, f"{ERRORS_FOLDER}/{name}", report) for name in sorted(error_parts)]
    if not error_parts and merged_errors and parts.exists(merged_errors):
        errors = [_read_keys(parts.url(merged_errors), lambda: _csv_keys(parts.read_bytes(merged_errors)))]
    report.errors = sum(len(k) for k in errors)
    done = plan.take([i for p, i in planned.items() if p in committed])
    report.committed_keys = sum(done.column("size").to_pylist())
    _compare(report, done, keys + errors)
    report.temporaries = parts.temporaries()
    return report


def _verify_merged(out: str, beside: PartStore, plan_name: str) -> Verification:
    plan = _read_plan(beside, plan_name)
    report = Verification(out, units=plan.num_rows, committed=plan.num_rows)
    report.planned_keys = sum(plan.column("size").to_pylist())
    fs, path = open_location(out)
    data = open(path, "rb").read() if fs is None else fs.cat_file(path)
    read = _csv_keys if out.lower().endswith(".csv") else _parquet_keys
    rows = _read_keys(out, lambda: read(data))
    parent, errors_name = record_beside(out, ".errors.csv")
    errors_store = PartStore(parent)
    errors = (
        _read_keys(errors_store.url(errors_name), lambda: _csv_keys(errors_store.read_bytes(errors_name)))
        if errors_store.exists(errors_name)
        else pa.array([], pa.string())
    )
    report.rows, report.errors = len(rows), len(errors)
    _compare(report, plan, [rows, errors])
    report.temporaries = [out + ".tmp"] if exists(out + ".tmp") else []
    leftover = PartStore(out.rstrip("/") + ".parts")
    report.temporaries += [f"{leftover.location}/{name}" for name in leftover.temporaries()]
    return report


def _compare(report: Verification, plan: pa.Table, found: list) -> None:
    chunks = [c for k in found for c in (k.chunks if isinstance(k, pa.ChunkedArray) else [k])]
    keys = pa.chunked_array(chunks, pa.string())
    counts = pc.value_counts(keys)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)) if len(counts) else []
    report.duplicate_count = len(repeated)
    report.duplicates = repeated.field("values").to_pylist()[:_SHOWN] if len(repeated) else []
    hashes = plan.column("keys").to_pylist()
    expected_count = sum(plan.column("size").to_pylist())
    report.keys_match = len(keys) == expected_count
    if report.keys_match and None not in hashes:
        report.keys_match = keys_hash(keys.to_pylist()) == sum(hashes) % 2**64


class _Damaged(Exception):
    """A file verify cannot read keys from; the message says why, in one line."""


# What reading a damaged file raises: pyarrow's errors, and OS errors (a part removed while it is read).
_DAMAGE = (_Damaged, pa.ArrowException, OSError, ValueError)


def _part_keys(parts: PartStore, name: str, report: Verification) -> pa.ChunkedArray:
    """A part's keys; a part that cannot be read is listed in `report.damaged` and counts as holding none."""
    try:
        return _read_keys(name, lambda: _parquet_keys(parts.read_bytes(name)))
    except PictagError as exc:
        report.damaged.append(str(exc))
        return pa.chunked_array([], pa.string())


def _read_keys(where: str, read) -> pa.ChunkedArray:
    """`read()`'s keys, or one line naming `where` and the damage."""
    try:
        return read()
    except _DAMAGE as exc:
        raise PictagError(f"{where} is damaged: {_reason(exc)}") from None


def _parquet_keys(data: bytes) -> pa.ChunkedArray:
    # Page checksums, where the writer left them, find flipped bytes that would otherwise read as other keys.
    table = pq.read_table(io.BytesIO(data), columns=["key"], page_checksum_verification=True, use_threads=False)
    return _text(table["key"])


def _csv_keys(data: bytes) -> pa.ChunkedArray:
    # Every read here takes one thread: pyarrow's thread pool, once started, aborted 1 in 20 verify processes at exit
    # (exit 134, "terminate called without an active exception"; apache/arrow#34314). Its keys are small.
    reader = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(use_threads=False),
        convert_options=pacsv.ConvertOptions(column_types={"key": pa.string()}),
    )
    if "key" not in reader.column_names:
        raise _Damaged(f"it has no key column (it has {', '.join(reader.column_names[:5]) or 'none'})")
    return _text(reader["key"])


def _text(keys: pa.ChunkedArray) -> pa.ChunkedArray:
    """The keys as strings: another tool may have rewritten them as large strings or categories (pandas)."""
    kind = keys.type.value_type if pa.types.is_dictionary(keys.type) else keys.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise _Damaged(f"its keys are {keys.type}, not text: it was rewritten by another tool")
    return keys.cast(pa.string())


def _read_plan(store: PartStore, name: str) -> pa.Table:
    try:
        plan = pq.read_table(io.BytesIO(store.read_bytes(name)), use_threads=False)
        if not {"part", "size", "keys"} <= set(plan.column_names):
            raise _Damaged("it lacks the part, size and keys columns")
        return plan
    except _DAMAGE as exc:
        raise PictagError(
            f"the plan {store.url(name)} is damaged ({_reason(exc)}): verify cannot check {store.location}"
        ) from None


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0][:200] if text else type(exc).__name__
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in line)  # parsers quote the garbage they met
