"""The Ray executor on a simulated cluster: a head with no CPU and two worker nodes of one CPU each.

One cluster serves the whole module (starting one costs more than all the runs on it). Every test has a deadline
(`signal.alarm`), every subprocess a timeout. The model is a tiny transformers CLIP saved to a folder, because an
actor builds its model from the spec in its own process: `hf:<folder>` loads anywhere.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import jpeg_bytes, subprocess_env, write_tar

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
from ray.cluster_utils import Cluster  # noqa: E402

from pictag.distributed.ray_executor import RayExecutor  # noqa: E402
from pictag.distributed.verify import verify_output  # noqa: E402
from pictag.pipeline.classify import classify  # noqa: E402

LABELS = "cat,dog,car"
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
UNIT = 6
DEADLINE_S = 420  # per test: generous, for a busy 2-core machine; the module's seconds are measured in the report


@pytest.fixture(autouse=True)
def _deadline():
    def expired(signum, frame):
        raise TimeoutError(f"test ran past {DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(DEADLINE_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def cluster(request):
    # Ray's processes inherit this environment, not the per-test one conftest sets: the actors load the model
    # offline, as the driver does, and reach the S3 test server (its endpoint and keys) where there is one.
    if importlib.util.find_spec("moto") and importlib.util.find_spec("s3fs"):
        request.getfixturevalue("s3")
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    # A lost node is declared dead after `health_check_failure_threshold` missed checks, one per period: Ray's
    # defaults (5 × 3 s) are for real networks; a node of this cluster is a local process, so 3 × 1 s says the same.
    checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    head = {"num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * 2**20, "_system_config": checks}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(2):
        cluster.add_node(**NODE)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if saved is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = saved


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A tar of 96 small JPEGs and one corrupt member: 17 units of 6."""
    images = {f"img{i:04d}.jpg": jpeg_bytes(Image.new("RGB", (48 + i % 9, 36), (i % 256, 90, 160))) for i in range(96)}
    images["corrupt.jpg"] = b"\xff\xd8 not a jpeg"
    return write_tar(tmp_path_factory.mktemp("ray-src") / "shard.tar", images)


@pytest.fixture(scope="module")
def in_process(shards, tiny_hf_clip, tmp_path_factory):
    """The in-process executor's results on the same images: what every Ray run must equal."""
    out = tmp_path_factory.mktemp("inprocess") / "out.parquet"
    classify(str(shards), str(out), LABELS, model=f"hf:{tiny_hf_clip}", unit_size=UNIT, workers=0)
    return _rows(out)


def _options(tiny_hf_clip, **more):
    return {"model": f"hf:{tiny_hf_clip}", "unit_size": UNIT, "batch_size": 4, "executor": "ray", **more}


def _rows(out: Path) -> dict[str, tuple]:
    return _keyed(pq.read_table(out).to_pylist())


def _keyed(rows: list[dict]) -> dict[str, tuple]:
    keyed = {r["key"]: (r["label"], r["score"]) for r in rows}
    assert len(keyed) == len(rows), "a key was written twice"
    return keyed


def _assert_same(rows: dict[str, tuple], expected: dict[str, tuple]) -> None:
    """Same keys and labels; scores equal but for float rounding (actors run torch on 1 thread, this process not)."""
    assert rows.keys() == expected.keys()
    assert {k: label for k, (label, _) in rows.items()} == {k: label for k, (label, _) in expected.items()}
    assert {k: score for k, (_, score) in rows.items()} == pytest.approx(
        {k: s for k, (_, s) in expected.items()}, abs=1e-4
    )


def _manifest(out: Path) -> list[dict]:
    return pq.read_table(out.with_name(out.stem + ".manifest.parquet")).to_pylist()


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def _wait_for_parts(folder: Path, n: int, alive=lambda: True, limit_s: float = 150) -> None:
    deadline = time.monotonic() + limit_s
    while len(_parts(folder)) < n:
        assert alive(), "the run ended before committing enough parts"
        assert time.monotonic() < deadline, f"fewer than {n} parts within {limit_s} s"
        time.sleep(0.05)


def _wait_for_actors_gone(limit_s: float = 60) -> None:
    """Until every CPU of the cluster is free again: the actors (one CPU each) of a killed driver are dead."""
    deadline = time.monotonic() + limit_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"a dead driver's actors still hold CPUs after {limit_s} s"
        time.sleep(0.05)


def test_a_run_begun_in_process_finishes_on_ray_equal_spread_over_both_nodes_with_a_corrupt_image_an_error_row(
    cluster, shards, tiny_hf_clip, in_process, tmp_path, monkeypatch
):
    from pictag.storage.parts import PartStore

    out = tmp_path / "ray.parquet"
    commit = PartStore.commit

    def interrupted_after_5(self, unit, rows, errors=None):  # Ctrl-C after the 5th unit, as a user would
        if len(self.part_names()) == 5:
            raise KeyboardInterrupt
        commit(self, unit, rows, errors)

    monkeypatch.setattr(PartStore, "commit", interrupted_after_5)
    with pytest.raises(KeyboardInterrupt):
        classify(str(shards), str(out), LABELS, **_options(tiny_hf_clip, executor="inprocess", workers=0))
    monkeypatch.setattr(PartStore, "commit", commit)
    assert len(_parts(tmp_path / "ray.parquet.parts")) == 5

    result = classify(str(shards), str(out), LABELS, **_options(tiny_hf_clip, concurrency="2", resume=True))
    _assert_same(_rows(out), in_process)  # keys, labels and scores
    assert result.errors == 1 and "corrupt.jpg" in (tmp_path / "ray.errors.csv").read_text()
    manifest = _manifest(out)
    assert sorted(row["ordinal"] for row in manifest) == list(range(5, 17))  # only what was left
    assert {row["executor"] for row in manifest} == {"ray"}
    assert len({row["node"] for row in manifest}) == 2, "work ran on one node only"
    report = verify_output(out)
    assert report.ok and (report.rows, report.errors, report.duplicate_count) == (96, 1, 0), report.summary()


def test_a_node_lost_mid_run_with_a_unit_given_twice_at_once_leaves_every_key_once(
    cluster, shards, tiny_hf_clip, in_process, tmp_path
):
    from pictag.storage.parts import PartStore

    out = tmp_path / "lost"
    job = _job(shards, tiny_hf_clip, out)
    twice = job.units[3]  # given to the pool twice: two actors commit it at once
    done: dict = {}

    def run() -> None:
        try:
            done["stats"] = RayExecutor(concurrency=(2, 2)).run(job, [*job.units, twice], lambda n: None)
        except BaseException as exc:  # reported by the main thread
            done["error"] = exc

    driver = threading.Thread(target=run)
    driver.start()
    _wait_for_parts(out, 2, alive=driver.is_alive)
    committed_at_loss = len(_parts(out))
    victim = next(iter(cluster.worker_nodes))
    cluster.remove_node(victim, allow_graceful=False)  # no grace: its actor and its units in flight are lost
    cluster.add_node(**NODE)
    driver.join(timeout=300)
    assert not driver.is_alive() and "error" not in done, done.get("error")
    assert committed_at_loss < len(job.units), "the run had finished before the node was lost"

    parts = PartStore(out)
    assert parts.part_names() == [unit.part_name for unit in job.units] and parts.temporaries() == []
    rows = _keyed([r for t in parts.tables() for r in t.to_pylist()])
    _assert_same(rows, in_process)  # every key once, with the in-process executor's labels and scores
    assert [r["key"] for t in parts.tables(errors=True) for r in t.to_pylist()] == ["corrupt.jpg"]
    attempts = [row["attempt"] for row in done["stats"].manifest if row["ordinal"] == twice.ordinal]
    assert len(attempts) == 2 and len(set(attempts)) == 2


def test_ray_driver_killed_then_resumed_in_process_computes_only_the_remaining_units(
    cluster, shards, tiny_hf_clip, in_process, tmp_path
):
    out = tmp_path / "killed.parquet"
    command = [sys.executable, "-m", "pictag", "classify", str(shards), "--labels", LABELS, "--out", str(out)]
    command += ["--model", f"hf:{tiny_hf_clip}", "--unit-size", str(UNIT), "--batch-size", "4"]
    command += ["--executor", "ray", "--ray-address", cluster.address, "--concurrency", "2"]
    proc = subprocess.Popen(command, env=subprocess_env(), start_new_session=True, stderr=subprocess.PIPE)
    parts = tmp_path / "killed.parquet.parts"
    try:
        _wait_for_parts(parts, 3, alive=lambda: proc.poll() is None, limit_s=200)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not out.exists()
    _wait_for_actors_gone()  # the dead driver's actors die with it; one mid-commit may still land its part
    before = {p.name for p in _parts(parts)}
    assert 3 <= len(before) < 17
    classify(str(shards), str(out), LABELS, **_options(tiny_hf_clip, executor="inprocess", resume=True, workers=0))
    plan_parts = pq.read_table(out.with_name("killed.plan.parquet")).column("part").to_pylist()
    rerun = {plan_parts[row["ordinal"]] for row in _manifest(out)}
    assert not rerun & before, "the rerun computed committed units again"
    assert rerun | before == set(plan_parts)
    _assert_same(_rows(out), in_process)
    assert verify_output(out).ok


def test_embed_on_ray_into_object_storage_equals_an_in_process_store(cluster, shards, tiny_hf_clip, tmp_path):
    """`local://` is fsspec's local file system behind a URL: the actors commit each shard as one PUT and the driver
    holds a lease, as on s3://, while every process can reach the files."""
    from pictag.store.embed import embed
    from pictag.store.store import EmbeddingStore

    model = {"model": f"hf:{tiny_hf_clip}", "unit_size": UNIT, "batch_size": 4}
    local = EmbeddingStore(embed(str(shards), str(tmp_path / "local"), **model, workers=0).out)
    url = f"local://{tmp_path}/remote"
    result = embed(str(shards), url, **model, executor="ray", concurrency="2")
    remote = EmbeddingStore(url)
    assert result.out == url and (len(remote), remote.manifest.errors) == (96, 1)
    assert list(remote.keys()) == list(local.keys())
    for (_, got), (_, want) in zip(remote.iter_arrays(), local.iter_arrays(), strict=True):
        assert abs(got.astype("float32") - want.astype("float32")).max() < 2e-3  # float16, torch on 1 thread or not
    manifest = pq.read_table(tmp_path / "remote" / "_manifest.parquet").to_pylist()
    assert {row["executor"] for row in manifest} == {"ray"} and len({row["node"] for row in manifest}) == 2
    assert not [p.name for p in (tmp_path / "remote").iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]


def test_classify_on_ray_into_s3_equals_the_in_process_run(cluster, s3, shards, tiny_hf_clip, in_process, tmp_path):
    """A bucket on an S3 server over HTTP: each actor PUTs its parts, the driver holds the lease and merges."""
    import fsspec

    out = f"{s3}/{tmp_path.name}/ray.parquet"
    result = classify(str(shards), out, LABELS, **_options(tiny_hf_clip, concurrency="2"))
    assert (result.out, result.classified, result.errors) == (out, 96, 1)
    fs, path = fsspec.core.url_to_fs(out)
    with fs.open(path, "rb") as f:
        _assert_same(_keyed(pq.read_table(f).to_pylist()), in_process)
    with fs.open(path.replace(".parquet", ".manifest.parquet"), "rb") as f:
        manifest = pq.read_table(f).to_pylist()
    assert len(manifest) == 17 and len({row["node"] for row in manifest}) == 2
    assert not fs.exists(f"{path}.parts"), "the parts folder (and its lease) outlived the merge"
    report = verify_output(out)
    assert report.ok and (report.rows, report.errors, report.duplicate_count) == (96, 1, 0), report.summary()


def _job(shards, tiny_hf_clip, out):
    """A classify job built the way `pictag classify` builds it, for calling the executor directly."""
    from pictag.pipeline.classify import ROWS_RECIPE, head_rows
    from pictag.pipeline.job import Job
    from pictag.pipeline.options import ClassifyConfig
    from pictag.pipeline.runner import ImageFeatures, stage_encoder
    from pictag.storage.parts import PartStore

    cfg = ClassifyConfig(
        source=str(shards), out=str(out), labels=LABELS, model=f"hf:{tiny_hf_clip}", unit_size=UNIT, batch_size=4
    )
    encoder = stage_encoder(cfg)
    rows, schema = head_rows(cfg, encoder)
    units = _units(shards)
    return Job("classify", units, ImageFeatures(encoder, 4), rows, schema, PartStore(out), 0, ROWS_RECIPE, cfg)


def _units(shards):
    from pictag.data import open_source
    from pictag.pipeline.plan import plan_units

    return plan_units(open_source(str(shards)), UNIT)
