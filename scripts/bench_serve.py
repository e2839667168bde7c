"""Load test of ``xmr serve`` on loopback: p50/p99 latency and QPS at 1, 8 and 32 concurrent clients for three ways
of serving the same index, in one run, every answer compared with direct search in this process.

The index: the first ``--n`` PyPI summaries (../shared/data/pypi-summaries) with their MiniLM vectors read from the
benchmark cache (~/.cache/xmr/bench-index/pypi-minilm/labels-000.npy, written by scripts/bench_index.py; read only),
built with ``--recipe`` (default ``ivf-fastscan-refine``, what ``auto`` builds from 50,001 to 1M labels: a search
costs ~0.1 ms, so what is measured is the service and the query encoder; ``auto`` at 50,000 labels is exact
search, ~5 ms per query on one thread). Queries: held-out summaries (the corpus's last rows), one per request,
k=10, each request on a new connection (so the kernel spreads them over the workers). Each variant runs as
``xmr serve --workers W --threads 1`` in a subprocess, for each W of ``--workers``:

- one request at a time (``--batch-queries 1``: each request is its own encoder forward and index search);
- batched (the default: the requests that waited while a search ran are answered by one search);
- batched with fast queries (``--fast-queries``: the index's encoder on ONNX Runtime int8 reading 48 tokens,
  made with ``xmr fast-queries --method onnx-int8 --max-seq-length 48``).

An answer is right when its scores match direct search of that query alone (same encoder path) within 1e-4 at
every rank and its ids match wherever the scores are not tied within 1e-4, the 11th label's included (a batched
forward pads the texts of a batch together, which moves a query vector by ~1e-7 and may swap labels that tie).

    python scripts/bench_serve.py --n 50000 --workers 1 2 --requests 1200   # writes eval/bench/serve/report.md
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "pypi-summaries" / "corpus.jsonl.gz"
CACHE = Path.home() / ".cache" / "xmr" / "bench-index" / "pypi-minilm" / "labels-000.npy"
CONCURRENCY = (1, 8, 32)
K = 10
TIE = 1e-4
VARIANTS = (("one request at a time", ["--batch-queries", "1"], False),
            ("batched", [], False),
            ("batched, fast queries (ONNX int8, 48 tokens)", ["--fast-queries"], True))


def read_texts(n: int, queries: int) -> tuple[list[dict], list[str]]:
    rows = [json.loads(line) for line in gzip.open(CORPUS, "rt", encoding="utf-8")]
    return [{"id": row["id"], "text": row["text"]} for row in rows[:n]], [row["text"] for row in rows[-queries:]]


def answered_right(hits: list[dict], want: list[dict]) -> bool:
    """``hits`` (k) against direct search's top k and the label after them (``want``, k + 1: the top k + 1 of an
    approximate index may differ from its top k, so the k are searched as the service does): scores equal within
    TIE at every rank, and ids equal at every rank whose direct score is not tied (within TIE) with a neighbour's."""
    expected = [hit["score"] for hit in want]
    if len(hits) != len(want) - 1 or not np.allclose([hit["score"] for hit in hits], expected[:-1], atol=TIE, rtol=0):
        return False
    return all(hit["id"] == truth["id"] or any(abs(expected[rank] - expected[other]) <= TIE
                                                 for other in (rank - 1, rank + 1) if other >= 0)
               for rank, (hit, truth) in enumerate(zip(hits, want, strict=False)))


async def load(port: int, queries: list[str], concurrency: int, expected: list[list[dict]]) -> dict:
    """``len(queries)`` requests from ``concurrency`` clients; latency of each, answers checked against direct."""
    import httpx

    latencies, wrong, failed = [], [], []
    pending = list(enumerate(queries))

    async def client(http: httpx.AsyncClient) -> None:
        while pending:
            number, text = pending.pop()
            started = time.perf_counter()
            try:
                response = await http.post("/search", json={"queries": [text], "k": K})
            except httpx.HTTPError as error:
                failed.append(f"{number}: {error!r}")
                continue
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                failed.append(f"{number}: HTTP {response.status_code} {response.text[:200]}")
                continue
            if not answered_right(response.json()["results"][0], expected[number]):
                wrong.append(number)

    # a new connection per request: which worker takes a kept-alive connection is decided once, so a few
    # long-lived connections can load one worker and leave another idle
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=pool) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(queries), "answered": len(latencies) - len(wrong)
            - len([f for f in failed if "HTTP" in f]), "wrong": len(wrong), "failed": len(failed),
            "failures": failed[:5], "seconds": round(elapsed, 2), "qps": round(len(queries) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_service(folder: Path, options: list[str], workers: int, queries: list[str],
                expected: list[list[dict]]) -> list[dict]:
    """Start ``xmr serve folder options``, warm it up, and load it at every CONCURRENCY level."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = folder.parent / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "xmr.cli", "serve", str(folder), "--port", str(port),
                               "--workers", str(workers), "--threads", "1", "--max-queries", "8", *options],
                              env=env, stderr=open(log, "w"))
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"the service did not start: {log.read_text()[-2000:]}")
            time.sleep(1)
        time.sleep(10)  # every worker has loaded the encoder (health answers as soon as the first one has)
        asyncio.run(load(port, queries[:40], 8, expected[:40]))  # warm-up, not reported
        return [asyncio.run(load(port, queries, level, expected)) for level in CONCURRENCY]
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="catalogue rows (at most the cached 50,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes (each a run)")
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    parser.add_argument("--recipe", default="ivf-fastscan-refine", help="index recipe (see indexes/)")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "serve")
    args = parser.parse_args()
    if not CORPUS.is_file() or not CACHE.is_file():
        raise SystemExit(f"needs {CORPUS} and {CACHE}")
    import torch

    torch.set_num_threads(1)
    import xmr
    from xmr.catalogue import LabelCatalogue
    from xmr.index.fast_queries import onnx_int8_queries

    load_before = [round(value, 2) for value in os.getloadavg()]
    labels, queries = read_texts(args.n, args.requests)
    vectors = np.load(CACHE, mmap_mode="r")[:args.n]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    encoder = xmr.load_encoder("all-MiniLM-L6-v2")
    index = xmr.build_index_from_embeddings(LabelCatalogue.from_records(labels, source="pypi-summaries"),
                                            np.ascontiguousarray(vectors), work / "index", encoder, recipe=args.recipe)
    index.attach_fast_queries(onnx_int8_queries(index.encoder, max_seq_length=48))
    index.save()
    rows, direct = [], {}
    for name, options, fast in VARIANTS:
        index.use_fast_queries(fast)
        started = time.perf_counter()
        expected = [index.predict([text], k=K).to_records()[0] for text in queries]
        direct[fast] = round((time.perf_counter() - started) / len(queries) * 1000, 2)
        for hits, text in zip(expected, queries, strict=True):  # the next label, for ties at the last rank
            hits.append(index.predict([text], k=K + 1).to_records()[0][-1])
        for workers in args.workers:
            rows += [{"variant": name, "workers": workers, **row}
                     for row in run_service(work / "index", options, workers, queries, expected)]
    facts = {"labels": args.n, "index": f"{index.describe()['structure']} (--recipe {args.recipe}), 384-d MiniLM",
             "threads_per_worker": 1, "k": K, "queries_per_request": 1,
             "direct_ms_per_query (one query per call, one thread: encode + search)": direct[False],
             "direct_ms_per_query, fast queries": direct[True], "cpus": os.cpu_count(),
             "python": platform.python_version(), "xmr": xmr.__version__,
             "load average before the run (1/5/15 min)": load_before,
             "load average after the run (1/5/15 min)": [round(value, 2) for value in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=2) + "\n")
    base = {(row["workers"], row["concurrency"]): row["qps"] for row in rows if row["variant"] == VARIANTS[0][0]}
    lines = ["# xmr serve load test (loopback)", "", f"`python scripts/bench_serve.py --n {args.n} --workers "
             f"{' '.join(map(str, args.workers))} --requests {args.requests} --recipe {args.recipe}`", "",
             ", ".join(f"{k}: {v}" for k, v in facts.items()), "",
             "QPS ratio: against one request at a time with the same workers and clients, this run. The load "
             "generator (httpx) runs on the same cores as the service.", "",
             "| workers | variant | clients | requests | answered right | wrong | failed | QPS | x one at a time | "
             "p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['variant']} | {r['concurrency']} | {r['requests']} | {r['answered']} | "
              f"{r['wrong']} | {r['failed']} | {r['qps']} | {r['qps'] / base[r['workers'], r['concurrency']]:.2f}x | "
              f"{r['p50_ms']} | {r['p99_ms']} |" for r in sorted(rows, key=lambda row: row["workers"])]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
