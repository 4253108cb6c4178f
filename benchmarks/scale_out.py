"""Scale-out benchmark: the in-process executor against Ray on 1 and 2 simulated nodes of 1 CPU each.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice .venv/bin/python benchmarks/scale_out.py [--images 24000] [--unit-sizes 50,1000]

Same images, same small model (a random transformers CLIP), in one run, for each unit size:
- in-process, on one thread (the CPU a 1-CPU Ray node has);
- Ray with a head of 0 CPUs and 1 worker node of 1 CPU, then with a second node added (one actor per node).

Throughput is steady-state: images committed after every actor had committed its first unit, over the time since
then, so start-up (model loading in each actor) is left out; start-up is printed separately (cluster start, and
from the run's start until the last actor began its first unit). Small units show Ray's cost per unit (a task, its
scheduling and its result); pictag's default unit size shows what a run with default options gets. T is the time the same images take at that throughput;
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
    from pictag.pipeline.plan import plan_units
    from pictag.pipeline.runner import ImageFeatures, stage_encoder
    from pictag.storage.parts import PartStore

    encoder = stage_encoder(cfg)
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
    # Steady state begins when every node has committed its first unit; start-up ends when the last node began it
    # (its commit time less the unit's own seconds, so that start-up does not grow with the unit size).
    firsts = [nodes.index(node) for node in set(nodes)]
    first = max(firsts)
    window = stamps[-1] - stamps[first]
    images = sum(sizes[first + 1 :])
    return {
        "images": sum(sizes),
        "units": len(sizes),
        "nodes": len(set(nodes)),
        "startup_s": max(stamps[i] - stats.manifest[i]["seconds"] for i in firsts) - started,
        "wall_s": ended - started,
        "img_s": images / window if window > 0 else float("nan"),
    }


def wait_until_idle(ray, limit_s: float = 120.0) -> None:
    """Wait until the last run's actors have given back their CPUs: a 1-CPU node cannot place a new actor before, and
    that wait would count as the next run's start-up."""
    deadline = time.monotonic() + limit_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster's CPUs were still taken after {limit_s:.0f} s")
        time.sleep(0.1)


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
    from pictag.pipeline.options import DEFAULT_UNIT_SIZE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24000)
    parser.add_argument(
        "--unit-sizes",
        default=f"50,{DEFAULT_UNIT_SIZE}",
        help="comma-separated; each is run by all three executors (default: a small unit, and pictag's default)",
    )
    args = parser.parse_args()
    unit_sizes = [int(size) for size in args.unit_sizes.split(",")]

    import ray
    from ray.cluster_utils import Cluster

    from pictag.distributed.ray_executor import RayExecutor
    from pictag.pipeline.job import InProcessExecutor
    from pictag.pipeline.options import ClassifyConfig

    tmp = Path(tempfile.mkdtemp(prefix="pictag-scale-out-"))
    os.environ["PICTAG_CACHE"] = str(tmp / "cache")
    model = save_random_hf_clip(tmp / "model", width=64, layers=2, vision_width=128, vision_layers=4, patch_size=32)
    tar = make_images(tmp, args.images)

    def job(size: int, name: str):
        cfg = ClassifyConfig(
            source=str(tar), out=str(tmp / "x.parquet"), labels=LABELS, model=f"hf:{model}", device="cpu",
            unit_size=size, batch_size=16,
        )  # fmt: skip
        return build_job(cfg, tmp / f"{name}-{size}")

    print(f"{args.images} images of 160x120 in units of {', '.join(map(str, unit_sizes))}; model: random CLIP, ViT "
          "4x128, patch 32")  # fmt: skip
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")

    torch.set_num_threads(1)  # the CPU that one Ray node of 1 CPU has (Ray gives each actor OMP_NUM_THREADS=1)
    results: dict[tuple[str, int], dict] = {}
    for size in unit_sizes:
        results["in-process, 1 thread", size] = timed_run(InProcessExecutor(), job(size, "inprocess"))

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
        for size in unit_sizes:
            wait_until_idle(ray)
            results["ray, 1 node", size] = timed_run(RayExecutor(concurrency=(1, 1)), job(size, "ray1"))
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        for size in unit_sizes:
            wait_until_idle(ray)
            results["ray, 2 nodes", size] = timed_run(RayExecutor(concurrency=(2, 2)), job(size, "ray2"))
        system_mb, actors_mb = ray_rss()
    finally:
        ray.shutdown()
        cluster.shutdown()

    print()
    print(f"{'executor':<22}{'unit':>6}{'units':>7}{'img/s':>9}{'start-up s':>12}{'wall s':>9}{'nodes':>7}")
    for (name, size), r in results.items():
        print(f"{name:<22}{size:>6}{r['units']:>7}{r['img_s']:>9.1f}{r['startup_s']:>12.1f}{r['wall_s']:>9.1f}"
              f"{r['nodes']:>7}")  # fmt: skip
    for size in unit_sizes:
        inproc, one, two = (results[name, size] for name in ("in-process, 1 thread", "ray, 1 node", "ray, 2 nodes"))
        t1, t2 = args.images / one["img_s"], args.images / two["img_s"]
        print(f"\nunits of {size}:")
        print(f"  ray 1 node / in-process: {one['img_s'] / inproc['img_s']:.2f}x   (asked: >= 0.85)")
        print(f"  scaling efficiency E = T1 / (2 x T2) = {t1:.1f} / (2 x {t2:.1f}) = {t1 / (2 * t2):.2f}   (asked: >= "
              "0.75)")  # fmt: skip
        print(f"  start-up, cluster + actors: {cluster_s:.1f} + {one['startup_s']:.1f} = "
              f"{cluster_s + one['startup_s']:.1f} s (1 node); actors on 2 nodes {two['startup_s']:.1f} s   (asked: "
              "<= 15)")  # fmt: skip
    print(f"\nray processes' memory (RSS): {system_mb:.0f} MiB control plane + {actors_mb:.0f} MiB workers/actors")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
