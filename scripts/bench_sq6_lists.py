"""The compressed target at small n: IVF-SQ6 with fewer inverted lists (and PCA-reduced variants) against Flat.

At n = 50,000 the ``ivf-sq6`` preset (IVF1024,SQ6) misses 1/4 of Flat's resident memory by a fraction of a MB; its
1,024 float32 centroids are 1.5 MB of a 16 MB index. This bench measures, on the vectors and queries of
``scripts/bench_index.py`` (same cache, same exact ground truth), each factory's recall@10 and QPS along nprobe and
its resident memory in a fresh process (``bench_index.index_resident_mb``), with Flat measured the same way in the
same run, so the ratio to Flat is like for like.

    .venv/bin/python scripts/bench_sq6_lists.py --n 50000 --out eval/bench/index-50k-peers

Writes OUT/sq6-lists.json and OUT/sq6-lists.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import faiss
import numpy as np
from bench_index import cached_embeddings, index_resident_mb, read_corpus, recall_at_k, timed_batch, write_json

NPROBES = (32, 48, 64, 96, 128, 192, 256)
FACTORIES = ("IVF1024,SQ6", "IVF512,SQ6", "IVF256,SQ6", "PCAR352,IVF1024,SQ6")


def measure(factory: str, labels: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path) -> dict:
    """Build ``factory``, sweep nprobe (recall@10, QPS), then its resident memory at the deepest nprobe."""
    index = faiss.index_factory(labels.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(labels)
    index.add(labels)
    folder = work / factory.replace(",", "_")
    folder.mkdir()
    faiss.write_index(index, str(folder / "index.faiss"))
    space, sweep = faiss.ParameterSpace(), {}
    for nprobe in NPROBES:
        space.set_index_parameter(index, "nprobe", nprobe)
        found, qps = timed_batch(lambda batch: index.search(batch, 10)[1], queries)
        sweep[nprobe] = {"recall_at_10": round(recall_at_k(found, truth), 4), "qps": round(qps)}
    return {"factory": factory, "index_bytes": (folder / "index.faiss").stat().st_size, "sweep": sweep,
            "resident": index_resident_mb(folder, work / "queries.npy", 0, {"nprobe": max(NPROBES)})}


def report(rows: list[dict], flat: dict, n: int) -> str:
    lines = [f"# IVF-SQ6 list count at n = {n:,} vs Flat (`scripts/bench_sq6_lists.py`)", "",
             f"Flat resident {flat['rss_mb']:.1f} MB (1/4: {flat['rss_mb'] / 4:.2f} MB), measured in the same run. "
             "First nprobe reaching recall@10 >= 0.95, its QPS (2,000 queries, one batch, 2 threads).", "",
             "| factory | index MB | resident MB | of Flat | nprobe at 0.95 | recall@10 | QPS |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        hit = next(((nprobe, point) for nprobe, point in row["sweep"].items() if point["recall_at_10"] >= 0.95), None)
        at = f"{hit[0]} | {hit[1]['recall_at_10']:.3f} | {hit[1]['qps']:,}" if hit else \
            f"- | {max(point['recall_at_10'] for point in row['sweep'].values()):.3f} (best) | -"
        resident = row["resident"]["rss_mb"]
        lines.append(f"| {row['factory']} | {row['index_bytes'] / 2**20:.1f} | {resident:.2f} | "
                     f"{resident / flat['rss_mb']:.3f} | {at} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "xmr" / "bench-index")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "eval/bench/index-50k-peers")
    parser.add_argument("--factories", nargs="+", default=list(FACTORIES))
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    texts, query_texts = read_corpus(args.n)
    labels, queries = cached_embeddings(texts, query_texts, args.cache / "pypi-minilm", 2)
    truth = faiss.knn(queries, labels, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    work = Path(tempfile.mkdtemp(prefix="bench-sq6-", dir=args.cache))
    try:
        np.save(work / "queries.npy", queries)
        rows = [measure(factory, labels, queries, truth, work) for factory in args.factories]
        flat_folder = work / "flat"
        flat_folder.mkdir()
        flat = faiss.IndexFlatIP(labels.shape[1])
        flat.add(labels)
        faiss.write_index(flat, str(flat_folder / "index.faiss"))
        flat_resident = index_resident_mb(flat_folder, work / "queries.npy", 0, {})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out / "sq6-lists.json", {"n": args.n, "flat": flat_resident, "rows": rows})
    (args.out / "sq6-lists.md").write_text(report(rows, flat_resident, args.n))
    print(report(rows, flat_resident, args.n))


if __name__ == "__main__":
    main()
