"""Embedding store benchmark: re-classify N synthetic embeddings (dim 512, fp16) against 1,000 labels, and search.

Prints, per N: seconds, GB/s of embeddings read against this machine's memory bandwidth (a numpy copy measured in
the same run), and peak RSS (of a fresh process that only re-classifies) against the store size. Beside it, the
naive way (read the whole store into memory, one big matmul + softmax) where it fits. Then, at the largest N:
the automatically chosen index, its build time, search latency p50/p99 (one query at a time) and recall@10 against
exact search, next to exact (Faiss flat) search.

The embeddings are synthetic but shaped like real ones: unit vectors around 1,000 centres (cosine ~0.85 to their
centre), since uniformly random vectors in 512-d have no near neighbours worth finding. Label prototypes come from
a CLIP-shaped model with a 512-d embedding and a tiny random text tower: text encoding is not what is measured
(prototypes are computed once and cached, and that time is printed separately).

    python benchmarks/embedding_store.py                      # N = 100k and 1M (a few minutes; ~1.1 GB in /tmp)
    python benchmarks/embedding_store.py --sizes 100000 --queries 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DIM, LABELS, CENTRES, SHARD_ROWS = 512, 1000, 1000, 65536
BENCH_ARCH = {
    "embed_dim": DIM,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
MODEL = "open_clip:pictag-bench-512"


def register_model(workdir: Path) -> None:
    import open_clip

    folder = workdir / "model_cfg"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pictag-bench-512.json").write_text(json.dumps(BENCH_ARCH))
    open_clip.add_model_config(folder)


def labels() -> list[str]:
    return [f"object class {i}" for i in range(LABELS)]


def memory_bandwidth(nbytes: int = 1 << 30) -> float:
    """GB/s of a numpy copy of 1 GiB (read + write counted), best of 3."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * nbytes / best / 1e9


def centres(seed: int = 0) -> np.ndarray:
    c = np.random.default_rng(seed).standard_normal((CENTRES, DIM)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def synthetic(n: int, seed: int, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres()[rng.integers(CENTRES, size=n)]
    x += spread / math.sqrt(DIM) * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_store(folder: Path, n: int):
    from pictag.models.registry import create_model
    from pictag.store.store import EmbeddingStore, Manifest, write_store

    if (folder / "manifest.json").is_file():
        store = EmbeddingStore(folder)
        if len(store) == n:
            return store
        raise SystemExit(f"{folder} holds another store: remove it")
    encoder = create_model(MODEL, random_weights=True, device="cpu")
    manifest = Manifest(encoder.spec, encoder.weights_id, encoder.preprocess.fingerprint, DIM, random_weights=True)
    chunks = (
        ([f"img{i:08d}" for i in range(a, min(a + SHARD_ROWS, n))], synthetic(min(SHARD_ROWS, n - a), seed=a + 1))
        for a in range(0, n, SHARD_ROWS)
    )
    return write_store(folder, chunks, manifest)


def child(mode: str, store: str, out: str, workdir: str) -> None:
    """One measurement in a fresh process, so its peak RSS is its own. Prints a JSON line."""
    import torch

    torch.set_num_threads(2)
    register_model(Path(workdir))
    baseline = peak_rss()
    started, cpu = time.perf_counter(), time.process_time()
    if mode == "pictag":
        import pictag

        result = pictag.EmbeddingStore(store).classify(out, labels=labels(), random_weights=True, overwrite=True)
        rows = result.classified
    else:  # naive: everything in memory, one matmul and a full softmax
        import pyarrow.parquet as pq

        from pictag.heads.zero_shot import ZeroShotClassifier
        from pictag.models.registry import create_model
        from pictag.store.store import embedding_array

        table = pq.read_table(sorted(Path(store).glob("part-*.parquet")), columns=["key", "embedding"])
        features = torch.from_numpy(embedding_array(table.column("embedding")).astype(np.float32))
        head = ZeroShotClassifier(create_model(MODEL, random_weights=True, device="cpu"), labels())
        scores, indices = head.scores(features).max(dim=1)
        pq.write_table(
            __import__("pyarrow").table(
                {"key": table.column("key"), "label": np.array(labels())[indices.numpy()], "score": scores.numpy()}
            ),
            out,
        )
        rows = len(features)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = peak_rss()
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": rows, "peak_rss": peak, "import_rss": baseline}))


def peak_rss() -> int:
    """This process's peak resident set (VmHWM): unlike ru_maxrss, it does not inherit the parent's from fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(mode: str, store, workdir: Path) -> dict:
    out = workdir / f"results-{mode}-{len(store)}.parquet"
    cmd = [sys.executable, __file__, "--child", mode, str(store.folder), str(out), str(workdir)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def latency(search, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q[None, :], k)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def search_benchmark(store, n_queries: int) -> None:
    import faiss

    from pictag.index.faiss_index import build_index, exact_search, recall_at_k

    print(f"\nsearch at N = {len(store):,} (faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads to build)")
    index = build_index(store, "auto")
    info = index.info
    print(f"  auto choice: {info.reason}")
    print(f"  built in {info.build_seconds:.1f} s, params {info.params}, tuning recall@10 {info.recall_at_10:.4f}")
    fresh = synthetic(n_queries, seed=10_000_019)  # new images of the same collection
    noise = np.random.default_rng(7).standard_normal(fresh.shape).astype(np.float32)
    noise -= (noise * fresh).sum(1, keepdims=True) * fresh
    off = fresh + math.sqrt(1 / 0.3**2 - 1) * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    off /= np.linalg.norm(off, axis=1, keepdims=True)  # text-like queries: cosine 0.3 to an image
    # Latency is of one query at a time on one thread: a server runs concurrent queries on the other cores.
    faiss.omp_set_num_threads(1)
    for name, queries in (("image-like queries", fresh), ("text-like queries (cos 0.3)", off)):
        truth = exact_search(store, queries, 10)[1]
        recall = recall_at_k(index.search(queries, 10)[1], truth)
        p50, p99 = latency(index.search, queries)
        print(f"  {info.type}: {name}: recall@10 {recall:.4f}, latency p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    flat = faiss.IndexFlatIP(store.dim)
    for _, vectors in store.iter_arrays(SHARD_ROWS):
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    p50_flat, p99_flat = latency(lambda q, k: flat.search(q, k), fresh)
    p50, p99 = latency(index.search, fresh)
    print(
        f"  exact Faiss flat: latency p50 {p50_flat:.2f} ms, p99 {p99_flat:.2f} ms "
        f"(approximate is {p50_flat / p50:.1f}x faster at p50)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--naive-up-to", type=int, default=1_000_000, help="run the in-memory baseline up to this N")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "pictag-bench-store"))
    parser.add_argument("--no-search", action="store_true", help="only the re-classification figures")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["PICTAG_CACHE"] = str(workdir / "cache")
    register_model(workdir)
    import torch

    torch.set_num_threads(2)
    from pictag.heads.zero_shot import ZeroShotClassifier
    from pictag.models.registry import create_model

    bandwidth = memory_bandwidth()
    print(f"load average {os.getloadavg()[0]:.1f} (above 2, other processes share the 2 cores: wall times suffer)")
    print(f"cores: {os.cpu_count()}, torch threads: 2; memory bandwidth (numpy copy, read+write): {bandwidth:.1f} GB/s")
    started = time.perf_counter()
    ZeroShotClassifier(create_model(MODEL, random_weights=True, device="cpu"), labels())
    print(f"text prototypes for {LABELS} labels: {time.perf_counter() - started:.1f} s (once; cached after)")
    store = None
    for n in args.sizes:
        started = time.perf_counter()
        store = make_store(workdir / f"emb-{n}", n)
        gb = store.nbytes / 1e9
        print(f"\nN = {n:,}: store {gb:.2f} GB of fp16 embeddings ({time.perf_counter() - started:.0f} s to generate)")
        rows = [("pictag (chunked, streamed)", measure("pictag", store, workdir))]
        if n <= args.naive_up_to:
            rows.append(("naive (load all, full softmax)", measure("naive", store, workdir)))
        for name, r in rows:
            rate = store.nbytes / r["seconds"] / 1e9
            print(
                f"  {name:32s} {r['seconds']:6.1f} s (CPU {r['cpu']:6.1f} s)  {n / r['seconds'] / 1e3:5.0f}k emb/s  "
                f"{rate:5.2f} GB/s "
                f"({rate / bandwidth:.1%} of bandwidth)  peak RSS {r['peak_rss'] / 1e9:5.2f} GB "
                f"({r['peak_rss'] / store.nbytes:.2f}x store; {r['import_rss'] / 1e9:.2f} GB after imports)"
            )
        if len(rows) == 2:
            print(
                f"  pictag vs naive: {rows[1][1]['seconds'] / rows[0][1]['seconds']:.2f}x time, "
                f"{rows[1][1]['peak_rss'] / rows[0][1]['peak_rss']:.2f}x memory"
            )
    if not args.no_search:
        search_benchmark(store, args.queries)


if __name__ == "__main__":
    main()
