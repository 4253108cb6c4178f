from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import jpeg_bytes, subprocess_env, tar_source, write_tar
from pictag.data import open_source
from pictag.models import create_model
from pictag.pipeline.job import Job, run_job
from pictag.pipeline.plan import plan_units
from pictag.pipeline.runner import ImageFeatures, iter_embeddings
from pictag.storage.parts import PartStore


@pytest.mark.parametrize("workers", [0, 2])
def test_every_record_once_across_workers_with_errors_travelling_along(tmp_path, tiny_open_clip, workers):
    spec, checkpoint = tiny_open_clip
    members = {f"{i:04d}.jpg": jpeg_bytes(Image.new("RGB", (32, 24), (i, i, i))) for i in range(1100)}
    members["broken.jpg"] = b"\xff\xd8 nope"
    source = open_source(write_tar(tmp_path / "t.tar", members))
    assert len(source.shards()) > 1
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    keys, errors = [], []
    skip = {"0000.jpg", "0001.jpg"}
    for batch in iter_embeddings(source, encoder, batch_size=50, workers=workers, skip=skip):
        assert batch.features.shape == (len(batch.keys), encoder.embed_dim)
        assert torch.allclose(batch.features.norm(dim=-1), torch.ones(len(batch.keys)), atol=1e-5)
        keys += batch.keys
        errors += batch.errors
    assert keys == [key for key in members if key not in skip | {"broken.jpg"}]  # in source order, whatever the workers
    assert [key for key, _ in errors] == ["broken.jpg"]


@pytest.mark.parametrize("workers", [0, 2])
def test_run_job_commits_one_part_per_unit_and_reruns_nothing(tmp_path, tiny_open_clip, workers):
    spec, checkpoint = tiny_open_clip
    source, members = tar_source(tmp_path)
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    units = plan_units(source, unit_size=7)
    parts = PartStore(tmp_path / "parts")
    schema = pa.schema([("key", pa.string())])
    job = Job(
        "test",
        units,
        ImageFeatures(encoder, batch_size=4),
        lambda b: pa.table([b.keys], schema=schema),
        schema,
        parts,
        workers,
    )
    stats = run_job(job)
    assert (stats.rows, stats.errors) == (30, 1) and {"data_s", "model_s"} <= set(stats.stages)
    assert parts.part_names() == [u.part_name for u in units]
    keys = [k for t in parts.tables() for k in t.column("key").to_pylist()]
    assert sorted(keys) == sorted(set(members) - {"broken.jpg"})
    assert [t.column("key").to_pylist() for t in parts.tables(errors=True)] == [["broken.jpg"]]
    assert parts.pending(units) == []
    (tmp_path / "parts" / units[1].part_name).unlink()
    rerun = run_job(job)
    assert (rerun.rows, rerun.errors) == (7, 0) and parts.pending(units) == []


@pytest.mark.parametrize("where", ["memory", "s3"])
def test_classify_writes_parts_merge_and_plan_to_an_fsspec_url(
    where, photo_dir, tiny_open_clip, request, monkeypatch, tmp_path
):
    """memory:// is fsspec's in-memory file system; s3:// a bucket on an S3 server over HTTP (s3fs)."""
    import uuid

    import fsspec

    from pictag.distributed.verify import verify_output
    from pictag.pipeline.classify import classify

    spec, checkpoint = tiny_open_clip
    # One batch per unit, so the resumed run's batches are the uninterrupted run's: the outputs are compared bit for
    # bit, and a matrix product on one thread rounds the last bit differently for another number of rows.
    options = {"model": spec, "checkpoint": str(checkpoint), "unit_size": 2, "batch_size": 2, "workers": 0}
    bucket = request.getfixturevalue("s3") if where == "s3" else "memory://pictag-runs"
    out = f"{bucket}/{uuid.uuid4().hex[:8]}/out.parquet"
    commit = PartStore.commit

    def interrupted_after_1(self, unit, rows, errors=None):  # Ctrl-C once a part is committed, as a user would
        if self.part_names():
            raise KeyboardInterrupt
        commit(self, unit, rows, errors)

    monkeypatch.setattr(PartStore, "commit", interrupted_after_1)
    with pytest.raises(KeyboardInterrupt):
        classify(str(photo_dir), out, "cat,dog", **options)
    monkeypatch.setattr(PartStore, "commit", commit)
    result = classify(str(photo_dir), out, "cat,dog", **options, resume=True)
    assert result.out == out and result.classified == 5
    fs, path = fsspec.core.url_to_fs(out)
    with fs.open(path.replace(".parquet", ".manifest.parquet"), "rb") as f:
        assert pq.read_table(f).column("ordinal").to_pylist() == [1, 2]  # the resumed run computed the rest only
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path.rsplit("/", 1)[0], detail=False))
    assert names == ["out.config.yaml", "out.errors.csv", "out.manifest.parquet", "out.parquet", "out.plan.parquet"]
    report = verify_output(out)
    assert report.ok and report.units == 3 and report.rows == 5 and report.duplicate_count == 0, report.summary()
    local = classify(str(photo_dir), str(tmp_path / "local.parquet"), "cat,dog", **options)
    with fs.open(path, "rb") as f:
        assert pq.read_table(f).sort_by("key").equals(pq.read_table(local.out).sort_by("key"))


def test_object_storage_without_credentials_is_one_line(photo_dir, tmp_path):
    """botocore's own error (not an OSError) for an environment with no AWS credentials at all."""
    pytest.importorskip("s3fs")
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("AWS_")}
    missing = str(tmp_path / "none")
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing}
    command = [sys.executable, "-m", "pictag", "embed", str(photo_dir), "--out", "s3://pictag-no-credentials/emb"]
    command += ["--model", "timm:test_efficientnet", "--random-weights", "--workers", "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "pictag embed: error: object storage: Unable to locate credentials (check the credentials and endpoint)"
    ], done.stderr
