"""Memory layout of one HNSW graph: vectors in insertion order vs stored by k-means cluster (build knob
``cluster_layout``), on 4 KiB pages vs huge pages (``faiss_ops.use_huge_pages``), in one process on one graph.

    .venv/bin/python scripts/bench_index_layout.py --n 723485 --out eval/bench/index-layout

The graph is built once through xmr's own FAISS path (``faiss_ops.create``/``add``: an ``IndexIDMap2`` over
``HNSW{M}``); each variant searches a fresh copy of it (``faiss.deserialize_index``), so the four share one graph and
return the same labels: only where the bytes lie differs. Per variant and efSearch: recall@10 against exact search
(checks that), QPS of one batch of 2,000 queries on ``--threads`` (``bench_index.timed_batch``: best of 2; the
committed 723k run took the best of 3), and the single-query p50 (``bench_index.latency_ms`` over 1,000 queries:
lowest of 3 medians, one thread) through ``faiss_ops.search``, the call xmr's FAISS stage makes. Variants
run in turn, ``--rounds`` times, in alternating order. Vectors: ``bench_index.py``'s cached PyPI MiniLM embeddings.
Writes OUT/layout.json and OUT/layout.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import K, cached_embeddings, latency_ms, read_corpus, recall_at_k, timed_batch  # noqa: E402

from xmr.index import faiss_ops  # noqa: E402
from xmr.index.huge_pages import THP_MODE  # noqa: E402

SINGLE_QUERIES = 1_000
VARIANTS = {"insertion order": (False, False), "huge pages": (False, True), "cluster layout": (True, False),
            "cluster layout + huge pages": (True, True)}


def measure(index: faiss.Index, queries: np.ndarray, knobs: dict) -> tuple[np.ndarray, float, float]:
    """Ids and QPS of one batch, and the single-query p50 in microseconds."""
    prepared: dict = {}
    ids, qps = timed_batch(lambda batch: faiss_ops.search(index, batch, K, knobs)[0], queries)
    p50_ms, _ = latency_ms(lambda query: faiss_ops.search(index, query, K, knobs, prepared), queries, SINGLE_QUERIES)
    return ids, qps, 1000 * p50_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=723_485)
    parser.add_argument("--M", type=int, default=32)
    parser.add_argument("--efConstruction", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--cluster-layout", type=int, default=1000, help="labels per k-means cluster")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "xmr" / "bench-index")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    texts, query_texts = read_corpus(args.n)
    labels, queries = cached_embeddings(texts, query_texts, args.cache / "pypi-minilm", args.threads)
    truth = faiss.knn(queries, labels, K, metric=faiss.METRIC_INNER_PRODUCT)[1]

    started = time.perf_counter()
    index = faiss_ops.create(labels.shape[1], f"HNSW{args.M}", "inner_product")
    faiss_ops.set_build_parameters(index, {"efConstruction": args.efConstruction})
    faiss_ops.add(index, labels, np.arange(len(labels)))
    build_s = time.perf_counter() - started
    graph = faiss.serialize_index(index)
    del index
    layout_s = None
    results: dict[str, dict] = {name: {} for name in VARIANTS}
    for round_ in range(args.rounds):
        for name in (list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]):
            clustered, huge = VARIANTS[name]
            index = faiss.deserialize_index(graph)
            if clustered:
                started = time.perf_counter()
                faiss_ops.store_by_cluster(index, labels, args.cluster_layout)
                layout_s = time.perf_counter() - started
            huge_bytes = faiss_ops.use_huge_pages(index) if huge else 0
            for ef in args.ef:
                ids, qps, p50 = measure(index, queries, {"efSearch": ef})
                point = results[name].setdefault(str(ef), {"recall_at_10": recall_at_k(ids, truth), "qps": [],
                                                            "p50_us": []})
                point["qps"].append(round(qps))
                point["p50_us"].append(round(p50, 1))
                print(round_, name, ef, point, f"huge pages: {huge_bytes / 2**20:.0f} MiB", flush=True)
            del index
    facts = {"n": args.n, "dim": int(labels.shape[1]), "factory": f"HNSW{args.M}",
             "efConstruction": args.efConstruction, "cluster_layout": args.cluster_layout, "build_s": build_s,
             "store_by_cluster_s": layout_s, "threads": args.threads, "rounds": args.rounds,
             "thp_mode": THP_MODE.read_text().strip() if THP_MODE.is_file() else "n/a",
             "kernel": platform.release(), "faiss": faiss.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                             time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layout.json").write_text(json.dumps({"facts": facts, "results": results}, indent=1) + "\n")
    base = results["insertion order"]
    lines = [f"# HNSW{args.M} memory layout, n = {args.n:,}, {args.threads} threads (batch), 1 thread (p50)", "",
             "| variant | efSearch | recall@10 | QPS (per round) | QPS vs insertion order | p50 us (per round) | "
             "p50 vs insertion order |", "|---|---|---|---|---|---|---|"]
    for name, points in results.items():
        for ef, point in points.items():
            qps_ratio = np.median(point["qps"]) / np.median(base[ef]["qps"])
            p50_ratio = np.median(point["p50_us"]) / np.median(base[ef]["p50_us"])
            lines.append(f"| {name} | {ef} | {point['recall_at_10']:.4f} | {', '.join(map(str, point['qps']))} | "
                         f"{qps_ratio:.2f}x | {', '.join(map(str, point['p50_us']))} | {p50_ratio:.2f}x |")
    lines += ["", f"Build {build_s:.0f} s; store_by_cluster {layout_s or 0:.1f} s; THP mode: {facts['thp_mode']}; "
              f"kernel {facts['kernel']}; faiss {facts['faiss']}; {facts['date']}."]
    (args.out / "layout.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
