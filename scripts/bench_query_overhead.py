"""What xmr's Python path adds to one query over FAISS's own search: p50 of ``LabelIndex.search_embeddings`` (knobs
passed per call, as ``bench_index.py`` does) vs the same folder's ``index.faiss`` read by FAISS with those knob values
set on it, one query at a time on one thread.

    .venv/bin/python scripts/bench_query_overhead.py --out OUT.json
    .venv/bin/python scripts/bench_query_overhead.py --xmr /path/to/another/checkout --out OUT.json   # A/B versions

Vectors: random unit vectors (the overhead does not depend on the data; the index folder is built once per
``--work`` folder and reused, so two versions search the same one). Each figure is the lowest, over ``--passes``
passes, of the median over ``--queries`` single queries, which on a shared 2-core host is steadier than one pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.ann import single_query_ms  # noqa: E402 - scripts/peers/ann.py: numpy only, no xmr

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xmr", type=Path, default=ROOT, help="checkout whose xmr package is measured")
    parser.add_argument("--work", type=Path, default=Path("/tmp/xmr-bench-query-overhead"))
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the result")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--recipe", default="hnsw32-sq8-refine")
    parser.add_argument("--efSearch", type=int, default=48)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--passes", type=int, default=5)
    return parser.parse_args(argv)


def p50_us(search, queries: np.ndarray, passes: int) -> float:
    """Lowest median over ``passes`` of one query at a time (``peers.ann.single_query_ms``; ``bench_index.latency_ms``
    is not imported, since that script would load its own checkout's xmr, not ``--xmr``)."""
    return 1000 * single_query_ms(lambda row: search(queries[row:row + 1]), len(queries), passes)[0]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(args.xmr.resolve()))
    import xmr
    from xmr.catalogue import LabelCatalogue
    from xmr.index import build_index_from_embeddings, load_index
    from xmr.io.atomic import write_text_atomically

    if not Path(xmr.__file__).resolve().is_relative_to(args.xmr.resolve()):
        sys.exit(f"bench_query_overhead: imported xmr from {xmr.__file__}, not from {args.xmr}")
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    labels = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    queries = labels[:args.queries] + 0.05 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    folder = args.work / f"{args.recipe}-{args.n}x{args.dim}"
    if not folder.is_dir():
        catalogue = LabelCatalogue(list(range(args.n)), [f"label {row}" for row in range(args.n)])
        build_index_from_embeddings(catalogue, labels, None, recipe=args.recipe).save(folder)
    index = load_index(folder, verify=False)
    knobs = {**index.knobs(), "efSearch": args.efSearch}
    raw = faiss.read_index(str(folder / "index.faiss"))
    faiss.ParameterSpace().set_index_parameters(raw, ",".join(f"{key}={value}" for key, value in knobs.items()))
    faiss_us = p50_us(lambda q: raw.search(q, 10), queries, args.passes)
    xmr_us = p50_us(lambda q: index.search_embeddings(q, k=10, **knobs), queries, args.passes)
    commit = subprocess.run(["git", "-C", str(args.xmr), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(args.xmr), "status", "--porcelain", "--", "xmr"], capture_output=True,
                           text=True).stdout.strip()
    result = {"xmr": str(args.xmr), "commit": commit + ("+changes" if dirty else ""), "recipe": args.recipe,
              "n": args.n, "dim": args.dim, "knobs": knobs, "queries": args.queries, "passes": args.passes,
              "faiss_p50_us": faiss_us, "xmr_p50_us": xmr_us, "overhead_us": xmr_us - faiss_us}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
