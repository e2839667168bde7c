"""Load test of ``xmr serve`` on loopback: p50/p99 latency and QPS at 1, 8 and 32 concurrent clients, every answer
compared with direct search in this process (none may be lost or differ).

The index: the first ``--n`` PyPI summaries (../shared/data/pypi-summaries) with their MiniLM vectors read from the
benchmark cache (~/.cache/xmr/bench-index/pypi-minilm/labels-000.npy, written by scripts/bench_index.py; read only),
indexed exactly (``Flat``) so that the expected answers are unambiguous. Queries: held-out summaries (the corpus's
last rows), one per request, k=10. The service runs as ``xmr serve --workers W --threads 1`` in a subprocess.

    python scripts/bench_serve.py --n 50000 --workers 2 --requests 600   # writes eval/bench/serve/
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


def read_texts(n: int, queries: int) -> tuple[list[dict], list[str]]:
    rows = [json.loads(line) for line in gzip.open(CORPUS, "rt", encoding="utf-8")]
    return [{"id": row["id"], "text": row["text"]} for row in rows[:n]], [row["text"] for row in rows[-queries:]]


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
            hits, want = response.json()["results"][0], expected[number]
            if [hit["id"] for hit in hits] != [hit["id"] for hit in want] or not np.allclose(
                    [hit["score"] for hit in hits], [hit["score"] for hit in want], atol=1e-4):
                wrong.append(number)

    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=pool) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(queries), "answered": len(latencies) - len(wrong)
            - len([f for f in failed if "HTTP" in f]), "wrong": len(wrong), "failed": len(failed),
            "failures": failed[:5], "seconds": round(elapsed, 2), "qps": round(len(queries) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="catalogue rows (at most the cached 50,000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "serve")
    args = parser.parse_args()
    if not CORPUS.is_file() or not CACHE.is_file():
        raise SystemExit(f"needs {CORPUS} and {CACHE}")
    import torch

    torch.set_num_threads(1)
    import xmr
    from xmr.catalogue import LabelCatalogue

    labels, queries = read_texts(args.n, args.requests)
    vectors = np.load(CACHE, mmap_mode="r")[:args.n]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    encoder = xmr.load_encoder("all-MiniLM-L6-v2")
    index = xmr.build_index_from_embeddings(LabelCatalogue.from_records(labels, source="pypi-summaries"),
                                            np.ascontiguousarray(vectors), work / "index", encoder, factory="Flat")
    started = time.perf_counter()
    expected = [index.predict([text], k=K).to_records()[0] for text in queries]
    direct_ms = (time.perf_counter() - started) / len(queries) * 1000
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "xmr.cli", "serve", str(work / "index"), "--port", str(port),
                               "--workers", str(args.workers), "--threads", "1", "--max-queries", "8"],
                              env=env, stderr=open(work / "server.log", "w"))
    try:
        import httpx

        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"the service did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        time.sleep(10)  # every worker has loaded the encoder (health answers as soon as the first one has)
        asyncio.run(load(port, queries[:20], 2, expected[:20]))  # warm-up, not reported
        rows = [asyncio.run(load(port, queries, level, expected)) for level in CONCURRENCY]
    finally:
        server.terminate()
        server.wait(timeout=60)
    facts = {"labels": args.n, "index": "Flat (exact), 384-d MiniLM", "workers": args.workers,
             "threads_per_worker": 1, "k": K, "queries_per_request": 1, "direct_search_ms_per_query":
             round(direct_ms, 1), "cpus": os.cpu_count(), "python": platform.python_version(),
             "xmr": xmr.__version__, "load average after the run (1/5/15 min)": [round(value, 2) for value in
                                                                                   os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=2) + "\n")
    lines = ["# xmr serve load test (loopback)", "", f"`python scripts/bench_serve.py --n {args.n} --workers "
             f"{args.workers} --requests {args.requests}`", "", ", ".join(f"{k}: {v}" for k, v in facts.items()), "",
             "| clients | requests | answered right | wrong | failed | QPS | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['requests']} | {r['answered']} | {r['wrong']} | {r['failed']} | {r['qps']} | "
              f"{r['p50_ms']} | {r['p99_ms']} |" for r in rows]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
