"""`pictag verify OUT`: is an output exactly its plan? Every planned key once, nothing else, no temporary file left.

It reads the plan a run saved (`_plan.parquet` in a store or parts folder; `NAME.plan.parquet` beside a merged file)
and the keys the output holds, results and errors together, and compares them: the count, an order-free digest of
the keys (`pictag.pipeline.plan.keys_hash`), duplicates, parts missing from or foreign to the plan, and temporary
files of attempts that never finished.
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
from pictag.pipeline.job import record_beside
from pictag.pipeline.parts import ERRORS_FOLDER, PartStore, open_location
from pictag.pipeline.plan import PLAN_FILE, keys_hash

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

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stray or self.duplicate_count or self.temporaries) and self.keys_match

    def summary(self) -> str:
        lines = [
            f"{self.out}: {'OK' if self.ok else 'FAILED'}",
            f"  units: {self.committed:,} of {self.units:,} committed",
            f"  keys: {self.rows + self.errors:,} found ({self.rows:,} results, {self.errors:,} errors), "
            f"{self.planned_keys:,} planned; {'equal to' if self.keys_match else 'NOT equal to'} the plan's",
            f"  duplicated keys: {self.duplicate_count:,}"
            + (f" ({', '.join(self.duplicates)})" if self.duplicates else ""),
            f"  temporary files left: {len(self.temporaries):,}",
        ]
        if self.missing:
            lines.append(f"  units without a part: {len(self.missing):,} (an interrupted run: --resume finishes it)")
        if self.stray:
            lines.append(f"  parts not in the plan: {len(self.stray):,} ({', '.join(self.stray[:_SHOWN])})")
        return "\n".join(lines)


def verify_output(out: str | os.PathLike) -> Verification:
    """Check an output (a classify file, an embedding store, or the parts folder of a run) against its plan.

    Raises:
        PictagError: no plan is found for `out` (it was not written by pictag, or by an older version).
    """
    out = os.fspath(out)
    folder = PartStore(out)
    if _is_dir(out) and folder.exists(PLAN_FILE):
        return _verify_parts(out, folder, merged_errors="errors.csv")
    in_progress = PartStore(out.rstrip("/") + ".parts")
    if in_progress.exists(PLAN_FILE):
        return _verify_parts(out, in_progress, merged_errors=None)
    parent, name = record_beside(out, ".plan.parquet")
    beside = PartStore(parent)
    if beside.exists(name) and _exists(out):
        return _verify_merged(out, beside, name)
    raise PictagError(f"no plan found for {out}: verify checks outputs of pictag classify and embed")


def _verify_parts(out: str, parts: PartStore, merged_errors: str | None) -> Verification:
    plan = _read_plan(parts.read_bytes(PLAN_FILE))
    committed = set(parts.part_names())
    planned = dict(zip(plan.column("part").to_pylist(), range(plan.num_rows)))
    report = Verification(out, units=plan.num_rows, planned_keys=sum(plan.column("size").to_pylist()))
    report.missing = [p for p in planned if p not in committed]
    report.stray = [p for p in sorted(committed) if p not in planned]
    report.committed = plan.num_rows - len(report.missing)
    keys = [_keys(parts, name) for name in sorted(committed)]
    report.rows = sum(len(k) for k in keys)
    error_parts = set(parts.part_names(errors=True)) & committed
    errors = [_keys(parts, f"{ERRORS_FOLDER}/{name}") for name in sorted(error_parts)]
    if not error_parts and merged_errors and parts.exists(merged_errors):
        errors = [_csv_keys(parts.read_bytes(merged_errors))]
    report.errors = sum(len(k) for k in errors)
    done = [i for p, i in planned.items() if p in committed]
    _compare(report, plan.take(done), keys + errors)
    report.temporaries = parts.temporaries()
    return report


def _verify_merged(out: str, beside: PartStore, plan_name: str) -> Verification:
    plan = _read_plan(beside.read_bytes(plan_name))
    report = Verification(out, units=plan.num_rows, committed=plan.num_rows)
    report.planned_keys = sum(plan.column("size").to_pylist())
    fs, path = open_location(out)
    data = open(path, "rb").read() if fs is None else fs.cat_file(path)
    rows = _csv_keys(data) if out.lower().endswith(".csv") else pq.read_table(io.BytesIO(data), columns=["key"])["key"]
    parent, errors_name = record_beside(out, ".errors.csv")
    errors_store = PartStore(parent)
    errors = (
        _csv_keys(errors_store.read_bytes(errors_name))
        if errors_store.exists(errors_name)
        else pa.array([], pa.string())
    )
    report.rows, report.errors = len(rows), len(errors)
    _compare(report, plan, [rows, errors])
    report.temporaries = [out + ".tmp"] if _exists(out + ".tmp") else []
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


def _keys(parts: PartStore, name: str) -> pa.ChunkedArray:
    data = parts.read_bytes(name)
    return pq.read_table(io.BytesIO(data), columns=["key"])["key"]


def _csv_keys(data: bytes) -> pa.ChunkedArray:
    options = pacsv.ConvertOptions(column_types={"key": pa.string()}, include_columns=["key"])
    return pacsv.read_csv(io.BytesIO(data), convert_options=options)["key"]


def _read_plan(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def _is_dir(location: str) -> bool:
    fs, path = open_location(location)
    return os.path.isdir(path) if fs is None else fs.isdir(path)


def _exists(location: str) -> bool:
    fs, path = open_location(location)
    return os.path.exists(path) if fs is None else fs.exists(path)


def run(cfg) -> Verification:
    """`pictag verify`: the report when the output holds, else its counts as one error line (exit 2)."""
    report = verify_output(cfg.out)
    if not report.ok:
        raise PictagError(" ".join(line.strip() for line in report.summary().splitlines()))
    return report
