"""`pictag embed`: `run(EmbedConfig) -> EmbedResult` embeds a source once into an embedding store, resumably."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from pictag.config import dump_config, load_config
from pictag.data.decode import DEFAULT_MAX_PIXELS
from pictag.errors import PictagError
from pictag.models.registry import default_model
from pictag.pipeline.classify import source_embeddings
from pictag.pipeline.parts import PartWriter, TableWriter
from pictag.store.store import DTYPES, MANIFEST, SHARD_WRITE_OPTIONS, Manifest, embedding_table

ERRORS_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string())])
# Options that change what the stored vectors are: a resumed run must keep them.
_RESULT_DEFINING = ("source", "index", "path_column", "model", "checkpoint", "random_weights", "dtype")


@dataclass
class EmbedConfig:
    """Everything `pictag embed` takes; see `pictag embed --help` for each option."""

    source: str
    out: str
    model: str = field(default_factory=default_model)
    checkpoint: str | None = None
    random_weights: bool = False
    index: str | None = None
    index_columns: str | None = None  # e.g. "key=filename,offset=start,size=length"; known names are recognised
    path_column: str = "path"
    dtype: str = "float16"
    batch_size: int = 64
    workers: int | None = None
    device: str | None = None
    precision: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    rows_per_shard: int = 65536
    resume: bool = False
    overwrite: bool = False


@dataclass
class EmbedResult:
    out: Path
    errors_out: Path
    embedded: int
    errors: int
    seconds: float

    def summary(self) -> str:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        return (
            f"embedded {self.embedded:,} images in {self.seconds:.1f} s ({rate:.1f} img/s) -> {self.out}; "
            f"{self.errors:,} unreadable -> {self.errors_out}"
        )


def run(cfg: EmbedConfig) -> EmbedResult:
    """Embed every image of `cfg.source` into the store `cfg.out`, committing shards as it goes.

    Raises:
        PictagError: bad input, or a store that exists (pass `overwrite`) or was interrupted (pass `resume`).
    """
    started = time.perf_counter()
    if cfg.dtype not in DTYPES:
        raise PictagError(f"--dtype must be one of {', '.join(DTYPES)}, not {cfg.dtype!r}")
    if cfg.batch_size < 1:
        raise PictagError(f"--batch-size must be at least 1, not {cfg.batch_size}")
    out = Path(cfg.out)
    _check_resumable(cfg, out)
    shards = PartWriter(out, rows_per_part=cfg.rows_per_shard, write_options=SHARD_WRITE_OPTIONS)
    # Errors get their own parts; a key is in exactly one of the two, so skipping both keeps exactly-once.
    failures = PartWriter(out / "errors.parts")
    done = shards.done_keys() | failures.done_keys()
    encoder, batches, total = source_embeddings(cfg, done)
    manifest = Manifest(
        model=encoder.spec,
        weights_id=encoder.weights_id,
        preprocess=encoder.preprocess.fingerprint,
        dim=encoder.embed_dim,
        dtype=cfg.dtype,
        source=cfg.source,
        index=cfg.index,
        path_column=cfg.path_column,
        checkpoint=str(Path(cfg.checkpoint).resolve()) if cfg.checkpoint else None,
        random_weights=cfg.random_weights,
    )
    manifest.write(out)
    dump_config(cfg, out / "config.yaml")

    with tqdm(total=total, unit="img", desc="embed", dynamic_ncols=True, disable=None) as bar:
        for batch in batches:
            if batch.keys:
                shards.write(embedding_table(batch.keys, batch.features.cpu().numpy(), cfg.dtype))
            if batch.errors:
                failures.write(pa.table(list(zip(*batch.errors)), schema=ERRORS_SCHEMA))
            bar.update(len(batch.keys) + len(batch.errors))
    failures.flush()
    shards.flush()

    errors_out = out / "errors.csv"
    writer = TableWriter(errors_out)
    for table in failures.tables():
        writer.write(table)
    writer.close(ERRORS_SCHEMA)
    manifest.count = _count_rows(shards)
    manifest.errors = _count_rows(failures)
    manifest.complete = True
    manifest.write(out)
    failures.remove()
    return EmbedResult(out, errors_out, manifest.count, manifest.errors, time.perf_counter() - started)


def embed(source: str, out: str, **options) -> EmbedResult:
    """Python twin of `pictag embed`: options are the EmbedConfig fields (model=, dtype=, resume=, ...)."""
    return run(load_config(EmbedConfig, source=source, out=out, **options))


def _count_rows(parts: PartWriter) -> int:
    return sum(pq.read_metadata(part).num_rows for part in parts.parts())


def _check_resumable(cfg: EmbedConfig, out: Path) -> None:
    if not (out / MANIFEST).is_file():
        if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
            raise PictagError(f"{out} exists and is not an embedding store: choose an empty or new folder")
        return
    if cfg.overwrite:
        for path in [*out.glob("part-*.parquet"), out / MANIFEST, out / "errors.csv", out / "config.yaml"]:
            path.unlink(missing_ok=True)
        for path in out.glob("index.*"):
            path.unlink()
        PartWriter(out / "errors.parts").remove()
        return
    manifest = Manifest.read(out)
    if manifest.complete:
        raise PictagError(f"{out} is a complete embedding store: pass --overwrite to re-embed")
    if not cfg.resume:
        raise PictagError(f"{out} has an interrupted embed run: pass --resume to finish it or --overwrite")
    before = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
    changed = [k for k in _RESULT_DEFINING if before.get(k) != dataclasses.asdict(cfg)[k]]
    if changed:
        raise PictagError(
            f"cannot resume {out}: {', '.join(changed)} changed since the interrupted run; "
            "use the same options, or --overwrite to start over"
        )
