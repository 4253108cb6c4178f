"""Recall@K evaluation on large galleries: pictag's chunked Faiss search beside pytorch-metric-learning's
`AccuracyCalculator`, seconds and peak memory.

    PYTHONPATH=src flock /tmp/pictag-bench.lock nice python benchmarks/metric_learning_eval.py
    PYTHONPATH=src flock /tmp/pictag-bench.lock nice python benchmarks/metric_learning_eval.py --queries 10000 --gallery 100000

Data: synthetic L2-normalised float32 vectors of `--dim` dimensions around one centre per class, about 10 gallery
items per class (so R of MAP@R is about 10), queries drawn from the same classes. Both sides compute Recall@1
(the library's precision_at_1) and MAP@R on the same vectors.

Each measurement runs in its own process (this script with --worker), so that its peak RSS is its own: the process
builds the data, resets its peak (Linux /proc/self/clear_refs), evaluates, and reports seconds and the peak RSS
during evaluation, with the RSS before it (the data and the libraries) beside it. The library runs under a cap on its address space
(`--library-cap-gb` of address space above what the process holds after building the data): its default k=None asks Faiss for every
gallery item of every query, a queries x gallery result of float32 distances and int64 ids, which is where large
galleries run out of memory (pytorch-metric-learning #353). Sizes grow by x2 until the library no longer fits
under the cap; the largest that fits is then run by pictag too, for the ratio. Last, pictag alone at
`--queries` x `--gallery`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic(queries: int, gallery: int, dim: int, seed: int = 0):
    """(queries, query labels, gallery, gallery labels), built in blocks so the inputs are the peak."""
    rng = np.random.default_rng(seed)
    classes = max(1, gallery // 10)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)

    def vectors(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, n)
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, 65536):
            block = labels[start : start + 65536]
            # Noise 2.5x the centres' scale leaves Recall@1 near 0.75 at 20k gallery items (lower on larger ones):
            # results that are neither all right nor all wrong, so that the two sides' agreement means something.
            x = centres[block] + 2.5 * rng.standard_normal((len(block), dim), dtype=np.float32)
            out[start : start + len(block)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out, labels

    q, ql = vectors(queries)
    g, gl = vectors(gallery)
    return q, ql, g, gl


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def worker(args: argparse.Namespace) -> None:
    q, ql, g, gl = synthetic(args.queries, args.gallery, args.dim)
    import faiss  # noqa: F401  (imported before the peak is reset, as the library imports it too)
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.which == "library":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calculator = AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r"), device=torch.device("cpu")
        )
        limit = rss_kb("VmSize") * 1024 + int(args.library_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    else:
        from pictag.eval.retrieval import retrieval_metrics
    before = rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    started = time.perf_counter()
    if args.which == "library":
        got = calculator.get_accuracy(q, ql, g, gl)
        recall1, map_r = got["precision_at_1"], got["mean_average_precision_at_r"]
    else:
        got = retrieval_metrics(q, ql, g, gl, [1, 5], chunk=args.chunk)
        recall1, map_r = got.recall[1], got.map_at_r
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_gb": rss_kb("VmHWM") / 2**20,
                "before_gb": before / 2**20,
                "recall@1": recall1,
                "map@r": map_r,
            }
        )
    )


def measure(args: argparse.Namespace, which: str, queries: int, gallery: int) -> dict | None:
    """One measurement in a fresh process; None when it failed (out of its memory cap, or out of time)."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        which,
        "--queries",
        str(queries),
        "--gallery",
        str(gallery),
        "--dim",
        str(args.dim),
        "--threads",
        str(args.threads),
        "--chunk",
        str(args.chunk),
        "--library-cap-gb",
        str(args.library_cap_gb),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  {which} at {queries:,} x {gallery:,}: failed (exit {done.returncode}): {last[:160]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def line(which: str, queries: int, gallery: int, m: dict) -> str:
    return (
        f"  {which:<8} {queries:>9,} x {gallery:>11,}  {m['seconds']:8.1f} s  peak RSS {m['peak_gb']:6.2f} GB "
        f"(before {m['before_gb']:.2f} GB: data, libraries)  recall@1 {m['recall@1']:.4f}  map@r {m['map@r']:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--library-cap-gb", type=float, default=4.0)
    parser.add_argument("--start-gallery", type=int, default=2000, help="the library's first size (queries: 1/10)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--worker", choices=["pictag", "library"], dest="which", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        worker(args)
        return

    print(
        f"dim {args.dim}, {args.threads} threads, library capped at {args.library_cap_gb:g} GB of address space above its data"
    )
    print("pytorch-metric-learning AccuracyCalculator (default k), growing x2 until it no longer fits:")
    fitted, size = None, args.start_gallery
    while size <= args.gallery:
        m = measure(args, "library", size // 10, size)
        if m is None:
            break
        print(line("library", size // 10, size, m))
        fitted, size = (size, m), size * 2
    if args.start_gallery > args.gallery:
        print("  skipped: --start-gallery is above --gallery")
    elif fitted is None:
        print(f"  the library fits no size from {args.start_gallery:,} up")
    else:
        print(f"  stops fitting at {size // 10:,} x {size:,} (largest that fits: {fitted[0] // 10:,} x {fitted[0]:,})")
        size, lib = fitted
        ours = measure(args, "pictag", size // 10, size)
        print(line("pictag", size // 10, size, ours))
        same = abs(ours["recall@1"] - lib["recall@1"]) < 1e-6 and abs(ours["map@r"] - lib["map@r"]) < 1e-4
        print(f"  the same Recall@1 and MAP@R as the library: {'yes' if same else 'NO'}")
        print(
            f"  at {size // 10:,} x {size:,}: pictag {lib['seconds'] / ours['seconds']:.1f}x faster, peak RSS above "
            f"the data {(lib['peak_gb'] - lib['before_gb']) / max(ours['peak_gb'] - ours['before_gb'], 1e-3):.0f}x "
            f"smaller ({ours['peak_gb'] - ours['before_gb']:.3f} GB against {lib['peak_gb'] - lib['before_gb']:.2f})"
        )
    print(f"pictag at {args.queries:,} x {args.gallery:,}:")
    ours = measure(args, "pictag", args.queries, args.gallery)
    if ours is None:
        print("  failed or timed out")
        return
    print(line("pictag", args.queries, args.gallery, ours))
    full = args.queries * args.gallery * 12 / 2**30
    print(
        f"  a full result matrix (float32 + int64 ids, as the library's default k builds) would be {full:,.1f} GB; "
        f"pictag's peak above its data: {ours['peak_gb'] - ours['before_gb']:.3f} GB"
    )


if __name__ == "__main__":
    main()
