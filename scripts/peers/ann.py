"""hnswlib and PECOS HNSW over label vectors: recall / QPS / latency sweep for xmr's ANN benchmark.

Runs in its own environment (.venv-peers: libpecos pins numpy<2; scripts/bench_index.py creates it with hnswlib
0.8.0 and libpecos 1.2.8); exchanges data through files only:

    .venv-peers/bin/python scripts/peers/ann.py --labels L.npy --queries Q.npy --truth T.npy --k 10 --threads 2 \
        --systems hnswlib,pecos --out OUT.json [--hnswlib-M 16 32] [--ef 16 32 64 128 256 512] \
        [--ef-construction 200] [--pecos-M 32]

L.npy holds (n, d) float32 unit-norm label vectors, Q.npy (nq, d) float32 queries and T.npy (nq, k) int64 exact
inner-product top-k label ids. Both systems search by inner product (distance 1 - <q, x>) over label ids 0..n-1.
For each system and M it builds one index (build_s, index_bytes on disk, process RSS in MB before and after the
build), then for each ef: batch search of all queries on --threads threads (qps, best of 2), recall@k against T,
and single-query latency on one thread over the first 200 queries (p50_ms, p99_ms). Writes OUT.json atomically:
{"versions": {distribution: version}, "rows": [{system, recipe, params, n, build_s, index_bytes, rss_mb,
rss_base_mb, recall_at_<k>, qps, p50_ms, p99_ms}, ...]}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import numpy as np

LATENCY_QUERIES = 200
BATCH_REPEATS = 2


class Index(Protocol):
    def search(self, queries: np.ndarray, ef: int, k: int, threads: int) -> np.ndarray:
        """(len(queries), k) int64 label ids, nearest first."""

    def index_bytes(self) -> int:
        """Size of the saved index on disk."""


class HnswlibIndex:
    """hnswlib inner-product index whose item labels are the row ids of the label matrix."""

    def __init__(self, labels: np.ndarray, m: int, ef_construction: int, threads: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=labels.shape[1])
        self.index.init_index(max_elements=len(labels), M=m, ef_construction=ef_construction)
        self.index.add_items(labels, np.arange(len(labels)), num_threads=threads)

    def search(self, queries: np.ndarray, ef: int, k: int, threads: int) -> np.ndarray:
        self.index.set_ef(ef)
        ids, _ = self.index.knn_query(queries, k=k, num_threads=threads)
        return ids.astype(np.int64)

    def index_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "index.bin"
            self.index.save_index(str(path))
            return path.stat().st_size


class PecosIndex:
    """PECOS HNSW inner-product index over the dense label matrix; node ids are its row ids."""

    def __init__(self, labels: np.ndarray, m: int, ef_construction: int, threads: int) -> None:
        from pecos.ann.hnsw import HNSW

        self.pred_params = HNSW.PredParams
        params = HNSW.TrainParams(M=m, efC=ef_construction, metric_type="ip", threads=threads)
        self.model = HNSW.train(labels, train_params=params)
        self.searchers: dict[int, HNSW.Searchers] = {}

    def search(self, queries: np.ndarray, ef: int, k: int, threads: int) -> np.ndarray:
        # One pre-allocated searcher per thread, created on first use per thread count; predict then runs on
        # len(searchers) threads and returns (ids uint32, 1 - ip float32), each (len(queries), k), nearest first.
        if threads not in self.searchers:
            self.searchers[threads] = self.model.searchers_create(num_searcher=threads)
        params = self.pred_params(efS=ef, topk=k, threads=threads)
        ids, _ = self.model.predict(queries, pred_params=params, searchers=self.searchers[threads], ret_csr=False)
        return ids.astype(np.int64)

    def index_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as folder:
            self.model.save(folder)
            return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


SYSTEMS: dict[str, tuple[str, Callable[..., Index]]] = {
    "hnswlib": ("hnswlib", HnswlibIndex),
    "pecos": ("libpecos", PecosIndex),
}


def rss_mb() -> float:
    """Resident set size of this process in MB (VmRSS from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def load(path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise SystemExit(f"ann.py: input file not found: {path}")
    return np.load(path)


def load_inputs(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and queries as C-contiguous float32, truth as (nq, k) int64; exits on any shape mismatch."""
    labels, queries, truth = load(args.labels), load(args.queries), load(args.truth)
    if labels.ndim != 2 or queries.ndim != 2 or truth.ndim != 2:
        raise SystemExit(
            f"ann.py: expected 2-D arrays, got labels {labels.shape}, queries {queries.shape}, truth {truth.shape}"
        )
    if labels.shape[1] != queries.shape[1]:
        raise SystemExit(f"ann.py: labels have d={labels.shape[1]} but queries d={queries.shape[1]}")
    if truth.shape[0] != queries.shape[0] or truth.shape[1] < args.k:
        raise SystemExit(f"ann.py: truth {truth.shape} does not match {queries.shape[0]} queries x k={args.k}")
    if args.k > len(labels):
        raise SystemExit(f"ann.py: k={args.k} exceeds the {len(labels)} labels")
    if truth.min() < 0 or truth.max() >= len(labels):
        raise SystemExit(f"ann.py: truth ids outside [0, {len(labels)})")
    labels = np.ascontiguousarray(labels, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return labels, queries, truth[:, : args.k].astype(np.int64)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k."""
    hits = sum(len(np.intersect1d(row, true_row)) for row, true_row in zip(found, truth, strict=True))
    return hits / truth.size


def batch_search(index: Index, queries: np.ndarray, ef: int, k: int, threads: int) -> tuple[np.ndarray, float]:
    """Ids of all queries in one call and the best queries-per-second over BATCH_REPEATS calls."""
    best = float("inf")
    for _ in range(BATCH_REPEATS):
        started = time.perf_counter()
        ids = index.search(queries, ef, k, threads)
        best = min(best, time.perf_counter() - started)
    return ids, len(queries) / best


def latency_ms(index: Index, queries: np.ndarray, ef: int, k: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of one-query searches on one thread over the first LATENCY_QUERIES queries."""
    index.search(queries[:1], ef, k, 1)  # untimed warm-up
    times = []
    for row in range(min(LATENCY_QUERIES, len(queries))):
        started = time.perf_counter()
        index.search(queries[row : row + 1], ef, k, 1)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def benchmark_recipe(
    system: str, m: int, labels: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> list[dict]:
    """Build one index of `system` with M=m and sweep ef over it; the index is freed on return."""
    gc.collect()
    base = rss_mb()
    started = time.perf_counter()
    index = SYSTEMS[system][1](labels, m, args.ef_construction, args.threads)
    build = {
        "system": system,
        "recipe": f"HNSW M{m} efC{args.ef_construction}",
        "n": len(labels),
        "build_s": time.perf_counter() - started,
        "rss_mb": rss_mb(),
        "rss_base_mb": base,
        "index_bytes": index.index_bytes(),
    }
    rows = []
    for ef in args.ef:
        ids, qps = batch_search(index, queries, ef, args.k, args.threads)
        p50, p99 = latency_ms(index, queries, ef, args.k)
        row = {
            **build,
            "params": f"ef={ef}",
            f"recall_at_{args.k}": recall(ids, truth),
            "qps": qps,
            "p50_ms": p50,
            "p99_ms": p99,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True)
    parser.add_argument("--queries", required=True)
    parser.add_argument("--truth", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--systems", default="hnswlib,pecos")
    parser.add_argument("--hnswlib-M", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--pecos-M", type=int, nargs="+", default=[32])
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--ef-construction", type=int, default=200)
    args = parser.parse_args()
    args.systems = args.systems.split(",")
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {sorted(SYSTEMS)}")
    return args


def main() -> None:
    args = parse_args()
    labels, queries, truth = load_inputs(args)
    ms = {"hnswlib": args.hnswlib_M, "pecos": args.pecos_M}
    rows = [
        row
        for system in args.systems
        for m in ms[system]
        for row in benchmark_recipe(system, m, labels, queries, truth, args)
    ]
    versions = {SYSTEMS[system][0]: version(SYSTEMS[system][0]) for system in args.systems}
    write_atomic(Path(args.out), {"versions": versions, "rows": rows})


if __name__ == "__main__":
    main()
