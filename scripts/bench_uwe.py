"""Re-rank latency and token-cache memory of a UWE index (issue 14): what the late-interaction stage adds per query.

    .venv/bin/python scripts/bench_uwe.py runs/uwe-esco/index --out eval/bench/uwe-esco

Queries (the ESCO test sentences by default) are encoded once; then the index is searched with ``rerank=0`` (FAISS
over the pooled vectors only) and with ``rerank=K`` for K = 50, 100, 200, one query per call (online serving) and in
batches of 256; the added latency per query is the difference, median of ``--repeats`` rounds (interleaved, so load
on the machine hits every setting alike). Memory: the stage's cached bytes per label for the index's target mode, and
for the other mode (``target: tokens`` keeps every label token: encoded here with the same model). Writes
``results.json`` and ``README.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import xmr
from xmr.datasets import read_instances
from xmr.encoders import load_encoder
from xmr.uwe import build_uwe_index

KS = (50, 100, 200)


def per_query_ms(index: xmr.LabelIndex, queries: xmr.representations.TokenVectors, rerank: int,
                 batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.predict_encoded(queries.take(np.arange(start, min(start + batch, len(queries)))), k=10, rerank=rerank)
    return 1000 * (time.perf_counter() - started) / len(queries)


def latency(index: xmr.LabelIndex, queries: xmr.representations.TokenVectors, repeats: int) -> dict:
    rounds: dict[str, list[float]] = {}
    for _ in range(repeats):
        for batch in (1, 256):
            for rerank in (0, *KS):
                rounds.setdefault(f"{batch}/{rerank}", []).append(per_query_ms(index, queries, rerank, batch))
    result = {}
    for batch in (1, 256):
        base = statistics.median(rounds[f"{batch}/0"])
        result[f"batch {batch}"] = {"pooled_only_ms_per_query": round(base, 4), **{
            f"K={k}": {"ms_per_query": round(statistics.median(rounds[f"{batch}/{k}"]), 4),
                       "added_ms_per_query": round(statistics.median(rounds[f"{batch}/{k}"]) - base, 4)}
            for k in KS}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("--queries", default="../shared/data/esco-skill-extraction/test.jsonl")
    parser.add_argument("--limit", type=int, default=300, help="queries timed (the first N)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    index = xmr.load_index(args.index)
    items = read_instances(args.queries).items()[:args.limit]
    queries = index.encoder.encode(items, "query")
    stage = index.rerankers[0]
    other = "tokens" if stage.target == "pooled" else "pooled"
    other_encoder = load_encoder({**index.manifest["encoder"], "target": other})
    other_index = build_uwe_index(index.catalogue, other_encoder, None, rerank=stage.depth)
    memory = {}
    for name, candidate in ((stage.target, index), (other, other_index)):
        cached = candidate.rerankers[0]
        memory[name] = {"labels": len(cached), "tokens": int(cached.offsets[-1]),
                        "tokens_per_label": round(int(cached.offsets[-1]) / len(cached), 2),
                        "bytes_per_label": round(cached.bytes_per_label(), 1),
                        "total_mb": round(cached.bytes_per_label() * len(cached) / 2 ** 20, 2)}
    results = {"index": args.index, "queries": args.queries, "timed_queries": len(items), "repeats": args.repeats,
               "threads": 1, "cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
               "pooled_faiss_bytes_per_label": index.dim * 4,
               "memory": memory,
               "latency": {stage.target: latency(index, queries, args.repeats),
                           other: latency(other_index, queries, args.repeats)}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [f"# UWE re-rank latency and token cache ({args.index})", "",
             f"`{' '.join(['.venv/bin/python', 'scripts/bench_uwe.py', args.index, '--out', args.out])}`; "
             f"{len(items)} queries, 1 thread, median of {args.repeats} interleaved rounds, machine load average "
             f"{results['load_average'][0]:.1f} (2 cores shared by four jobs: absolute numbers are pessimistic).", "",
             "| target mode | tokens / label | bytes / label | total MB | batch | pooled only ms/q | "
             + " | ".join(f"+K={k} ms/q" for k in KS) + " |", "|---|---|---|---|---|---|" + "---|" * len(KS)]
    for name in memory:
        for batch, row in results["latency"][name].items():
            lines.append(f"| {name} | {memory[name]['tokens_per_label']} | {memory[name]['bytes_per_label']} | "
                         f"{memory[name]['total_mb']} | {batch} | {row['pooled_only_ms_per_query']} | "
                         + " | ".join(str(row[f'K={k}']['added_ms_per_query']) for k in KS) + " |")
    lines += ["", f"FAISS Flat stores {index.dim * 4} bytes per label for the pooled vectors besides the token cache.",
              ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
