"""Scale-out benchmark: the in-process executor against Ray on 1 and 2 simulated nodes of 1 CPU each.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/scale_out.py [--images 2400]

Same images, same small model (a random transformers CLIP), same unit size, in one run:
- in-process, on one thread (the CPU a 1-CPU Ray node has);
- Ray with a head of 0 CPUs and 1 worker node of 1 CPU, then with a second node added (one actor per node).

Throughput is steady-state: images committed after every actor had committed its first unit, over the time since
then, so start-up (model loading in each actor) is left out; start-up is printed separately (cluster start, and
from the run's start to the last actor's first unit). T is the time the same images take at that throughput;
the scaling efficiency is E = T1 / (2 × T2). Memory is the resident memory of Ray's processes (its control plane,
and the actors), summed.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import psutil
import torch
from PIL import Image

from pictag.testing import save_random_hf_clip

LABELS = "cat,dog,car,bird,boat,tree,house,person"


def make_images(folder: Path, n: int) -> Path:
    import tarfile

    tar = folder / "images.tar"
    with tarfile.open(tar, "w") as archive:
        for i in range(n):
            img = Image.new("RGB", (160, 120), (i % 256, (7 * i) % 256, 90))
            for j in range(0, 160, 16):  # some texture, so the JPEG is not trivial to decode
                img.paste(((j * i) % 256, 40, 200), (j, (i + j) % 100, j + 8, (i + j) % 100 + 12))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            info = tarfile.TarInfo(f"img{i:05d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            archive.addfile(info, buf)
    return tar


def build_job(cfg, out: Path):
    from pictag.data import open_source
    from pictag.pipeline.classify import ROWS_RECIPE, head_rows
    from pictag.pipeline.job import Job
    from pictag.pipeline.parts import PartStore
    from pictag.pipeline.plan import plan_units
    from pictag.pipeline.runner import ImageFeatures

    encoder = cfg.create_encoder()
    rows, schema = head_rows(cfg, encoder)
    units = plan_units(open_source(cfg.source), cfg.unit_size)
    features = ImageFeatures(encoder, cfg.batch_size, cfg.max_pixels)
    return Job("classify", units, features, rows, schema, PartStore(out), 0, ROWS_RECIPE, cfg)


def timed_run(executor, job) -> dict:
    """Run every unit; returns start-up and steady-state figures from the time each unit's row came back."""
    from pictag.pipeline.job import Progress

    class Stamps(Progress):  # the executors report each committed unit, in the manifest's order
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, records: int) -> None:
            pass

        def unit_done(self) -> None:
            self.times.append(time.perf_counter())

    progress = Stamps()
    started = time.perf_counter()
    stats = executor.run(job, job.units, progress)
    ended = time.perf_counter()
    stamps = progress.times
    sizes = [row["rows"] + row["errors"] for row in stats.manifest]
    nodes = [row["node"] for row in stats.manifest]
    # Steady state begins when every node has committed its first unit.
    first = max(nodes.index(node) for node in set(nodes))
    window = stamps[-1] - stamps[first]
    images = sum(sizes[first + 1 :])
    return {
        "images": sum(sizes),
        "nodes": len(set(nodes)),
        "startup_s": stamps[first] - started,
        "wall_s": ended - started,
        "img_s": images / window if window > 0 else float("nan"),
    }


def ray_rss() -> tuple[float, float]:
    """(control plane, actors) resident memory of Ray's processes, in MiB."""
    system, actors = 0.0, 0.0
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
            rss = proc.info["memory_info"].rss / 2**20
        except (psutil.Error, TypeError):
            continue
        if proc.pid == os.getpid():
            continue
        if "ray::" in line or "default_worker.py" in line:
            actors += rss
        elif any(name in line for name in ("raylet", "gcs_server", "ray/dashboard", "log_monitor", "runtime_env")):
            system += rss
    return system, actors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2400)
    parser.add_argument("--unit-size", type=int, default=50)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from pictag.distributed.ray_executor import RayExecutor
    from pictag.options import ClassifyConfig
    from pictag.pipeline.job import InProcessExecutor

    tmp = Path(tempfile.mkdtemp(prefix="pictag-scale-out-"))
    os.environ["PICTAG_CACHE"] = str(tmp / "cache")
    model = save_random_hf_clip(tmp / "model", width=64, layers=2, vision_width=128, vision_layers=4, patch_size=32)
    tar = make_images(tmp, args.images)
    cfg = ClassifyConfig(
        source=str(tar), out=str(tmp / "x.parquet"), labels=LABELS, model=f"hf:{model}", device="cpu",
        unit_size=args.unit_size, batch_size=16,
    )  # fmt: skip
    print(f"{args.images} images of 160x120 in units of {args.unit_size}; model: random CLIP, ViT 4x128, patch 32")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")

    torch.set_num_threads(1)  # the CPU that one Ray node of 1 CPU has (Ray gives each actor OMP_NUM_THREADS=1)
    inproc = timed_run(InProcessExecutor(), build_job(cfg, tmp / "inprocess"))

    node = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    began = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * 2**20},
    )
    cluster.add_node(**node)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    cluster_s = time.perf_counter() - began
    try:
        one = timed_run(RayExecutor(concurrency=(1, 1)), build_job(cfg, tmp / "ray1"))
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        two = timed_run(RayExecutor(concurrency=(2, 2)), build_job(cfg, tmp / "ray2"))
        system_mb, actors_mb = ray_rss()
    finally:
        ray.shutdown()
        cluster.shutdown()

    t1, t2 = args.images / one["img_s"], args.images / two["img_s"]
    efficiency = t1 / (2 * t2)
    print()
    print(f"{'executor':<22}{'img/s':>9}{'start-up s':>12}{'wall s':>9}{'nodes':>7}")
    for name, r in (("in-process, 1 thread", inproc), ("ray, 1 node", one), ("ray, 2 nodes", two)):
        print(f"{name:<22}{r['img_s']:>9.1f}{r['startup_s']:>12.1f}{r['wall_s']:>9.1f}{r['nodes']:>7}")
    print()
    print(f"cluster start (head + 1 node): {cluster_s:.1f} s; actors' start-up: {one['startup_s']:.1f} s (1 node), "
          f"{two['startup_s']:.1f} s (2 nodes)")  # fmt: skip
    print(f"ray 1 node / in-process: {one['img_s'] / inproc['img_s']:.2f}x   (asked: >= 0.85)")
    print(f"scaling efficiency E = T1 / (2 x T2) = {t1:.1f} / (2 x {t2:.1f}) = {efficiency:.2f}   (asked: >= 0.75)")
    print(f"start-up, cluster + actors: {cluster_s + one['startup_s']:.1f} s   (asked: <= 15)")
    print(f"ray processes' memory (RSS): {system_mb:.0f} MiB control plane + {actors_mb:.0f} MiB workers/actors")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
