"""Streaming evaluation at scale: 100k queries against 1M labels in bounded memory (synthetic vectors).

Label vectors are random unit vectors; each query is a noisy copy of one label (its single true label), stored
in a memory-mapped file. ``xmr.evaluate`` searches them in batches with an exact (Flat) index, keeping only the
top-k ids per query. The script samples the process RSS while evaluating and writes
``eval/bench/streaming/results.json`` and ``report.md``.

    .venv/bin/python scripts/bench_eval_streaming.py [--labels 1000000] [--queries 100000] [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import xmr
from xmr.datasets import Instances


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Largest RSS seen while running, sampled every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_mb()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.05)

    def stop(self) -> float:
        self.running = False
        self.join()
        return self.peak


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--out", default="eval/bench/streaming")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    start_rss = rss_mb()
    labels = unit_rows(rng, args.labels, args.dim)
    catalogue = xmr.LabelCatalogue(list(range(args.labels)), [f"label {i}" for i in range(args.labels)],
                                   source="synthetic")
    tick = time.perf_counter()
    index = xmr.build_index_from_embeddings(catalogue, labels, None, factory="Flat")
    build_seconds = time.perf_counter() - tick
    truth = rng.integers(0, args.labels, size=args.queries)
    with tempfile.TemporaryDirectory() as scratch:
        queries = np.lib.format.open_memmap(Path(scratch) / "queries.npy", mode="w+", dtype=np.float32,
                                            shape=(args.queries, args.dim))
        for start in range(0, args.queries, 10_000):
            rows = truth[start:start + 10_000]
            noisy = labels[rows] + 0.5 * unit_rows(rng, len(rows), args.dim)
            queries[start:start + len(rows)] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
        queries.flush()
        del labels  # the index holds its own copy; what remains is what a real run would hold
        instances = Instances(list(range(args.queries)), [""] * args.queries, [[int(t)] for t in truth], [],
                              "synthetic")
        before_rss = rss_mb()
        sampler = RssSampler()
        sampler.start()
        result = xmr.evaluate(index, instances, ks=(1, 5, 10), batch_size=args.batch_size, query_vectors=queries)
        peak_rss = sampler.stop()

    index_mb = len(index.candidates) * args.dim * 4 / 2**20
    summary = {
        "labels": args.labels,
        "queries": args.queries,
        "dim": args.dim,
        "batch_size": args.batch_size,
        "index": "Flat (exact inner product)",
        "build_s": build_seconds,
        "evaluate_s": result["timings"]["total_s"],
        "search_queries_per_s": result["timings"]["search_queries_per_s"],
        "rss_mb_at_start": start_rss,
        "rss_mb_before_evaluate": before_rss,
        "peak_rss_mb_during_evaluate": peak_rss,
        "evaluate_added_mb": peak_rss - before_rss,
        "flat_index_vectors_mb": index_mb,
        "dense_score_matrix_would_be_mb": args.queries * args.labels * 4 / 2**20,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": result["metrics"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(
        "# Streaming evaluation: {queries:,} queries x {labels:,} labels ({dim}-d, synthetic)\n\n"
        "Command: `.venv/bin/python scripts/bench_eval_streaming.py --labels {labels} --queries {queries} "
        "--dim {dim}`\n\n"
        "| measure | value |\n|---|---|\n"
        "| index build (Flat) | {build_s:.1f} s |\n"
        "| evaluate (search + all metrics) | {evaluate_s:.1f} s ({search_queries_per_s:,.0f} queries/s) |\n"
        "| RSS before evaluate (index + catalogue) | {rss_mb_before_evaluate:,.0f} MB |\n"
        "| peak RSS during evaluate | {peak_rss_mb_during_evaluate:,.0f} MB |\n"
        "| memory evaluate added | {evaluate_added_mb:,.0f} MB |\n"
        "| label vectors in the index | {flat_index_vectors_mb:,.0f} MB |\n"
        "| a dense n x L score matrix would need | {dense_score_matrix_would_be_mb:,.0f} MB |\n\n"
        "P@1 {p1:.3f}, R@10 {r10:.3f} (sanity: queries are noisy copies of their label).\n".format(
            **summary, p1=result["metrics"]["P@1"], r10=result["metrics"]["R@10"]))
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
