"""Ray build evidence: encoding throughput with 1 vs 2 Ray workers, and ``build_index_ray`` of a PyPI catalogue vs
the single-process ``build_index`` with the same recipe (time, peak memory of all processes, recall@10 against
exact search, agreement of the two builds' answers). Exact truth: the benchmark cache's MiniLM vectors of the
same rows (~/.cache/xmr/bench-index/pypi-minilm/labels-*.npy, read only) when its chunks cover ``--n``, else the
rows encoded here.

Catalogue: the first ``--n`` PyPI summaries (../shared/data/pypi-summaries), written as 4 Parquet shards into a
temporary folder; queries: ``--queries`` held-out summaries (the corpus's last rows). Encoder: the bundled MiniLM.
Peak memory is the largest sum of resident memory over this process and all its descendants (Ray's GCS, raylet,
workers), sampled every 0.2 s; the single-process build is run in a child process so it is measured the same way.

    python scripts/bench_ray_build.py --n 200000 --throughput-n 20000   # writes eval/bench/ray-build/
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "pypi-summaries" / "corpus.jsonl.gz"
CACHE = Path.home() / ".cache" / "xmr" / "bench-index" / "pypi-minilm"  # labels-NNN.npy, 50k rows each; read only
RECIPE = "ivf-sq8"
K = 10


class PeakMemory:
    """Largest total RSS of this process and its descendants while the block runs."""

    def __enter__(self) -> PeakMemory:
        import psutil

        self.peak, self._stop = 0, threading.Event()
        me = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                total = 0
                for process in [me, *me.children(recursive=True)]:
                    try:
                        total += process.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
                time.sleep(0.2)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_shards(texts: list[dict], folder: Path, parts: int = 4) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for number, rows in enumerate(np.array_split(np.arange(len(texts)), parts)):
        pq.write_table(pa.Table.from_pylist([texts[row] for row in rows]), folder / f"part-{number}.parquet")
    return folder


def single_process_build(shards: Path, out: Path, result: dict) -> None:
    """Child process: the ordinary build (what ``xmr build --recipe ivf-sq8`` does), timed."""
    import functools

    import torch

    torch.set_num_threads(2)
    import xmr

    started = time.perf_counter()
    catalogue = functools.reduce(xmr.LabelCatalogue.concat, [xmr.LabelCatalogue.from_file(path)
                                                             for path in sorted(shards.glob("*.parquet"))])
    xmr.build_index(catalogue, "all-MiniLM-L6-v2", out, recipe=RECIPE)
    result["seconds"] = time.perf_counter() - started


def run_single(shards: Path, out: Path) -> dict:
    with multiprocessing.Manager() as manager, PeakMemory() as memory:
        result = manager.dict()
        child = multiprocessing.get_context("spawn").Process(target=single_process_build, args=(shards, out, result))
        child.start()
        child.join()
        seconds = result.get("seconds")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(memory.peak / 1e9, 2)}


def run_ray(shards: Path, out: Path, workers: int, block_rows: int) -> dict:
    from xmr.index.ray_build import build_index_ray

    with PeakMemory() as memory:
        started = time.perf_counter()
        index = build_index_ray(shards, "all-MiniLM-L6-v2", out, recipe=RECIPE, workers=workers,
                                block_rows=block_rows)
        seconds = time.perf_counter() - started
    build = index.manifest["build"]
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(memory.peak / 1e9, 2), "stage_seconds":
            build["seconds"], "encoder_processes": build["encoder_processes"], "workers": workers,
            "encoding_wall_s": build["encoding_wall_s"]}


def recall(index, queries: np.ndarray, truth: np.ndarray) -> tuple[float, np.ndarray]:
    ids = index.predict_encoded(queries, k=K).ids
    return float(np.mean([len(set(row) & set(want)) / K for row, want in zip(ids, truth, strict=True)])), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="catalogue rows of the build comparison")
    parser.add_argument("--throughput-n", type=int, default=3_000, help="rows encoded for 1 vs 2 Ray workers")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "ray-build")
    parser.add_argument("--keep", type=Path, help="results.json whose throughput runs are kept (not rerun)")
    args = parser.parse_args()
    import ray

    import xmr

    rows = [json.loads(line) for line in gzip.open(CORPUS, "rt", encoding="utf-8")]
    catalogue_rows = [{"id": row["id"], "text": row["text"]} for row in rows[:args.n]]
    query_texts = [row["text"] for row in rows[-args.queries:]]
    work = Path(tempfile.mkdtemp(prefix="bench-ray-build-"))
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"facts": {"n": args.n, "throughput_n": args.throughput_n, "queries": args.queries,
                              "recipe": RECIPE, "encoder": "all-MiniLM-L6-v2", "cpus": os.cpu_count(),
                              "ray": ray.__version__, "python": platform.python_version(),
                              "load average at start (1/5/15 min)": [round(v, 2) for v in os.getloadavg()]}}

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")

    small = write_shards(catalogue_rows[:args.throughput_n], work / "small")
    report["throughput"] = []
    if args.keep:  # runs already measured by an interrupted invocation with the same --throughput-n
        kept = json.loads(args.keep.read_text())
        assert kept["facts"]["throughput_n"] == args.throughput_n, "--keep: another --throughput-n"
        report["throughput"] = kept["throughput"]
    for workers in [count for count in (1, 2) if count not in {run["workers"] for run in report["throughput"]}]:
        run = run_ray(small, work / f"small-ray{workers}", workers, block_rows=250)
        run["texts_per_s"] = round(args.throughput_n / run["encoding_wall_s"], 1)
        report["throughput"].append(run)
        save()
        print(run, flush=True)

    shards = write_shards(catalogue_rows, work / "catalogue")
    report["single"] = run_single(shards, work / "single")
    save()
    print(report["single"], flush=True)
    report["ray"] = run_ray(shards, work / "ray", 2, block_rows=1000)
    save()
    print(report["ray"], flush=True)

    single, built = xmr.load_index(work / "single"), xmr.load_index(work / "ray")
    encoder = xmr.load_encoder("all-MiniLM-L6-v2")
    queries = encoder.encode_queries(query_texts)
    chunks = [np.load(path, mmap_mode="r") for path in sorted(CACHE.glob("labels-[0-9][0-9][0-9].npy"))]
    from bench_index import CHUNK  # scripts/bench_index.py writes the cache in chunks of this many rows

    chunks = chunks[:-(-args.n // CHUNK)]  # the chunks that cover --n, no more
    cached = sum(len(chunk) for chunk in chunks) >= args.n  # the same MiniLM label vectors, float32
    vectors = np.concatenate(chunks)[:args.n] if cached else encoder.encode_labels(
        [row["text"] for row in catalogue_rows])
    report["facts"]["truth"] = "benchmark cache" if cached else "encoded here"
    report["facts"]["load average at end (1/5/15 min)"] = [round(v, 2) for v in os.getloadavg()]
    exact = faiss.IndexFlatIP(queries.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    truth = exact.search(queries, K)[1]
    recall_single, ids_single = recall(single, queries, truth)
    recall_ray, ids_ray = recall(built, queries, truth)
    report["recall"] = {"recall@10 single": round(recall_single, 4), "recall@10 ray": round(recall_ray, 4),
                        "queries with identical top-10": int((ids_single == ids_ray).all(axis=1).sum()),
                        "queries": len(queries)}
    save()
    print(report["recall"], flush=True)
    write_markdown(args, report)


def write_markdown(args, report: dict) -> None:
    lines = ["# Ray build vs single-process build", "", f"`python scripts/bench_ray_build.py --n {args.n} "
             f"--throughput-n {args.throughput_n} --queries {args.queries}`"
             + (" (the 1-worker throughput run from an earlier invocation, kept with --keep)" if args.keep else ""),
             "",
             ", ".join(f"{key}: {value}" for key, value in report["facts"].items()), "",
             "## Encoding throughput (Ray Data actor pool, MiniLM, 1 thread per actor)", "",
             "texts/s = texts / (first block's start to last block's end), i.e. without the actors' start-up; "
             "encode stage s includes it.", "",
             "| workers | texts | encoding s | texts/s | encoder processes | encode stage s | whole build s |",
             "|---|---|---|---|---|---|---|"]
    for run in report["throughput"]:
        lines.append(f"| {run['workers']} | {args.throughput_n} | {run['encoding_wall_s']} | "
                     f"{run['texts_per_s']} | {run['encoder_processes']} | {run['stage_seconds']['encode_s']} | "
                     f"{run['seconds']} |")
    base = report["throughput"][0]["texts_per_s"]
    lines += ["", f"2 workers / 1 worker: {report['throughput'][1]['texts_per_s'] / base:.2f}x", "",
              f"## Build of {args.n} labels, recipe {RECIPE}", "",
              "| build | seconds | peak RSS GB (all processes) | recall@10 vs exact |", "|---|---|---|---|",
              f"| single process (build_index) | {report['single']['seconds']} | {report['single']['peak_rss_gb']} | "
              f"{report['recall']['recall@10 single']} |",
              f"| Ray, 2 workers (build_index_ray) | {report['ray']['seconds']} | {report['ray']['peak_rss_gb']} | "
              f"{report['recall']['recall@10 ray']} |", "",
              f"Ray stage seconds: {report['ray']['stage_seconds']}. Queries whose top-10 ids are identical in both "
              f"builds: {report['recall']['queries with identical top-10']} of {report['recall']['queries']}."]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
