"""Index benchmark: xmr's recipes vs raw FAISS and seven ANN libraries (hnswlib, PECOS HNSW, usearch, Voyager,
glass, NGT, ScaNN) on the same vectors, queries and threads, in one run.

    .venv/bin/python scripts/bench_index.py                 # N = 200,000 PyPI summaries, 2,000 queries
    .venv/bin/python scripts/bench_index.py --n 723485 --out eval/bench/index-725k
    .venv/bin/python scripts/bench_index.py --n 50000 --part peers --out OUT &   # the two halves side by side,
    .venv/bin/python scripts/bench_index.py --n 50000 --part xmr --out OUT       # then --part report merges them

Data: the first N rows of ../shared/data/pypi-summaries/corpus.jsonl.gz are the catalogue, the last 2,000 rows the
queries, embedded once with the bundled MiniLM and cached outside the repository (``--cache``, default
~/.cache/xmr/bench-index) in 50,000-row chunks, so reruns and larger N reuse them. Every system searches the same
float32 vectors with the same threads; exact top-10 from xmr Flat is the ground truth. For each point: build seconds,
index bytes (the saved file), RSS growth after loading it (xmr: a fresh process opens the folder; peers: after
build), recall@10, QPS (one batch of 2,000) and single-query p50/p99 (200 queries one at a time, one thread; the
pass with the lowest median of three, where a pass takes under 2 s).
The peers run in .venv-peers (libpecos pins numpy<2; ScaNN, which needs numpy>=2, in .venv-peers-scann) through
scripts/peers/ann.py, each along its own build x search grid (HNSW M from --M). ``--part`` runs the xmr half
(OUT/xmr.json), the peers half (OUT/peers.json) or both, and every run rewrites the report from the halves in OUT.
Writes OUT/{results.csv, report.md, recall_qps.png, encode.csv, facts.json}.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peers.ann import single_query_ms  # noqa: E402 - scripts/peers/ann.py, light imports only
from peers.environment import SCANN_SYSTEMS, peers_python  # noqa: E402 - scripts/peers/environment.py

from xmr.catalogue import LabelCatalogue  # noqa: E402
from xmr.encoders import load_encoder  # noqa: E402
from xmr.index import build_index_from_embeddings, load_index  # noqa: E402
from xmr.index.recipes import PRESETS, IndexRecipe, deep_probes, parse_memory  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "pypi-summaries" / "corpus.jsonl.gz"
CHUNK = 50_000
N_QUERIES = 2_000
LATENCY_QUERIES = 200
K = 10
COLUMNS = ("system", "recipe", "params", "n", "build_s", "index_bytes", "rss_mb", "recall_at_10", "qps", "p50_ms",
           "p99_ms")
EF_SWEEP = [16, 32, 64, 128, 256, 512]
NPROBE_SWEEP = [4, 8, 16, 32, 64, 128, 256]
PEERS = ("hnswlib", "pecos", "usearch", "voyager", "glass", "ngt", "scann")
# recipes for the 1/4-of-Flat target
COMPRESSED = ("ivf-sq8", "ivf-sq6", "ivf-pq", "ivf-pq-refine", "ivf-pq-refine-sq4")


def read_corpus(n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` texts (catalogue) and the last 2,000 (queries)."""
    texts = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
    if n + N_QUERIES > len(texts):
        raise SystemExit(f"--n {n}: the corpus has {len(texts)} rows and {N_QUERIES} are held out as queries")
    return texts[:n], texts[-N_QUERIES:]


def cached_embeddings(texts: list[str], queries: list[str], cache: Path,
                      threads: int) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM vectors of the catalogue (50k-row chunk files) and of the queries, computed once."""
    import torch

    torch.set_num_threads(threads)  # torch's default is the physical core count, often half the CPUs
    cache.mkdir(parents=True, exist_ok=True)
    encoder = None
    parts = []
    for number, start in enumerate(range(0, len(texts), CHUNK)):
        rows = texts[start:start + CHUNK]
        path = cache / f"labels-{number:03d}.npy"
        if path.is_file() and len(np.load(path, mmap_mode="r")) >= len(rows):
            parts.append(np.load(path, mmap_mode="r")[:len(rows)])
            continue
        if len(rows) < CHUNK:  # a partial last chunk is encoded but not cached under the full-chunk name
            path = cache / f"labels-{number:03d}-{len(rows)}.npy"
            if path.is_file():
                parts.append(np.load(path))
                continue
        encoder = encoder or load_encoder("all-MiniLM-L6-v2")
        started = time.perf_counter()
        vectors = encoder.encode_labels(rows)
        print(f"embedded rows {start}..{start + len(rows)} in {time.perf_counter() - started:.0f} s", flush=True)
        np.save(path.with_suffix(".tmp.npy"), vectors)
        os.replace(path.with_suffix(".tmp.npy"), path)
        parts.append(vectors)
    query_path = cache / "queries.npy"
    if not query_path.is_file():
        encoder = encoder or load_encoder("all-MiniLM-L6-v2")
        np.save(query_path.with_suffix(".tmp.npy"), encoder.encode_queries(queries))
        os.replace(query_path.with_suffix(".tmp.npy"), query_path)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), np.load(query_path)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def timed_batch(search, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Ids of one batch search and its QPS (best of two runs)."""
    best, ids = float("inf"), None
    for _ in range(2):
        started = time.perf_counter()
        ids = search(queries)
        best = min(best, time.perf_counter() - started)
    return ids, len(queries) / best


def latency_ms(search, queries: np.ndarray, count: int = LATENCY_QUERIES) -> tuple[float, float]:
    """Single-query p50/p99 on one thread over the first ``count`` queries, timed as the peers are
    (``peers.ann.single_query_ms``)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return single_query_ms(lambda row: search(queries[row:row + 1]), min(count, len(queries)))
    finally:
        faiss.omp_set_num_threads(threads)


def folder_bytes(folder: Path, names: tuple[str, ...] = ("index.faiss",)) -> int:
    return sum((folder / name).stat().st_size for name in names if (folder / name).is_file())


OPENERS = {  # (imports, open + search) of what was saved: an xmr folder, or a raw FAISS file
    "xmr": ("from xmr.index import load_index", "index = load_index(path, verify=False, mmap=mmap)\n"
            "index.search_embeddings(np.ones((1, index.dim), np.float32), k=10)"),
    "faiss": ("import faiss", "index = faiss.read_index(path)\nindex.search(np.ones((1, index.d), np.float32), 10)"),
}


def rss_after_load(path: Path, mmap: bool = False, opener: str = "xmr") -> float:
    """MB the resident set grows by when a fresh process (libraries already imported) opens ``path`` and searches."""
    imports, load = OPENERS[opener]
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); path, mmap = sys.argv[2], sys.argv[3] == '1'\n"
            "def rss(): return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
            f"{imports}\nbase = rss()\n{load}\nprint((rss() - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(path), "1" if mmap else "0"],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


INDEX_RESIDENT = """import ctypes, json, sys, numpy as np, faiss
def rss(): return {l.split(':')[0]: int(l.split()[1]) / 1024 for l in open('/proc/self/status')
                   if l.startswith(('Rss', 'VmHWM', 'VmRSS'))}
folder, queries, depth, knobs = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
base = rss()
index = faiss.read_index(folder + '/index.faiss')
space = faiss.ParameterSpace()
for name, value in knobs.items():
    space.set_index_parameter(index, name, value)
ids = index.search(queries, max(10, depth))[1]
if depth:  # the exact re-rank reads these rows of the memory-mapped vectors
    vectors = np.load(folder + '/vectors.npy', mmap_mode='r')
    float(vectors[np.unique(ids[ids >= 0])].sum())
ctypes.CDLL('libc.so.6').malloc_trim(0)  # hand back the search's freed buffers: what stays is the index's
after = rss()
print(json.dumps({**{key: after[key] - base[key] for key in after}, 'peak': after['VmHWM'] - base['VmRSS']}))
"""


def index_resident_mb(folder: Path, queries: Path, depth: int, knobs: dict) -> dict:
    """RSS growth (total, anonymous, file-backed) of a fresh process with only faiss and numpy that opens the index
    file, searches all queries with ``knobs`` and, for a re-ranking recipe, reads the vectors.npy rows the re-rank
    reads: the index's own resident memory, without the catalogue and the library code every recipe shares."""
    out = subprocess.run([sys.executable, "-c", INDEX_RESIDENT, str(folder), str(queries), str(depth),
                          json.dumps(knobs)], check=True, capture_output=True, text=True)
    growth = json.loads(out.stdout.strip().splitlines()[-1])
    return {"rss_mb": growth["RssAnon"] + growth["RssFile"] + growth.get("RssShmem", 0.0),
            "anon_mb": growth["RssAnon"], "file_mb": growth["RssFile"], "peak_mb": growth["peak"]}


def run_memory(args, catalogue: LabelCatalogue, labels: np.ndarray, queries: np.ndarray, work: Path) -> dict:
    """The compressed target's half: Flat and each compressed recipe built and saved, then its index-resident
    memory at its preset knobs and at the deepest setting of its sweep (the most candidates read)."""
    np.save(work / "queries.npy", queries)
    plans = {recipe.name: (recipe, sweep) for recipe, sweep, _ in xmr_plans(labels, args.M, args.ef)}
    result = {}
    for name in ("flat", *COMPRESSED):
        recipe, sweep = plans[name] if name in plans else (PRESETS[name], [])
        index = build_index_from_embeddings(catalogue, labels, None, recipe=recipe)
        folder = index.save(work / name)
        depth = index.knobs().get("rerank", 0)
        deepest = max(sweep, key=lambda knobs: tuple(sorted(knobs.values())), default={})
        result[name] = {"factory": index.candidates.factory, "index_bytes": folder_bytes(folder),
                        "preset": {"knobs": index.candidates.knobs(),
                                   **index_resident_mb(folder, work / "queries.npy", depth,
                                                       index.candidates.knobs())},
                        "deepest": {"knobs": deepest,
                                    **index_resident_mb(folder, work / "queries.npy", depth, deepest)}}
        print(name, result[name], flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    write_json(args.out / "memory.json", result)
    return result


def open_seconds(folder: Path, mmap: bool) -> float:
    started = time.perf_counter()
    load_index(folder, verify=False, mmap=mmap)
    return time.perf_counter() - started


def bench_raw_faiss(labels: np.ndarray, queries: np.ndarray, truth: np.ndarray, n: int) -> dict:
    started = time.perf_counter()
    index = faiss.IndexFlatIP(labels.shape[1])
    index.add(labels)
    build = time.perf_counter() - started
    search = lambda q: index.search(q, K)[1]  # noqa: E731
    ids, qps = timed_batch(search, queries)
    p50, p99 = latency_ms(search, queries)
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, f"{tmp}/flat.faiss")
        size = os.path.getsize(f"{tmp}/flat.faiss")
        rss = rss_after_load(Path(tmp) / "flat.faiss", opener="faiss")
    return {"system": "faiss", "recipe": "IndexFlatIP", "params": "exact", "n": n, "build_s": build,
            "index_bytes": size, "rss_mb": rss, "recall_at_10": recall_at_k(ids, truth), "qps": qps,
            "p50_ms": p50, "p99_ms": p99}


def recipe_label(index) -> str:
    """``FACTORY`` plus ``rerankN`` when the index re-ranks (the labels of the committed result tables)."""
    rerank = index.knobs().get("rerank", 0)
    return index.candidates.factory + (f" rerank{rerank}" if rerank else "")


def bench_xmr(recipe: IndexRecipe, sweep: list[dict], catalogue: LabelCatalogue, labels: np.ndarray,
              queries: np.ndarray, truth: np.ndarray | None, work: Path, **build_options) -> tuple[list[dict], dict]:
    """Build one recipe, save it, measure its folder, then every knob setting in ``sweep``."""
    started = time.perf_counter()
    index = build_index_from_embeddings(catalogue, labels, None, recipe=recipe, **build_options)
    build = time.perf_counter() - started
    folder = index.save(work / recipe.name)
    size = folder_bytes(folder)
    mapped = load_index(folder, verify=False, mmap=True)
    facts = {"p50_mmap_ms": latency_ms(lambda q: mapped.search_embeddings(q, k=K).ids, queries)[0],
             "rss_mb": rss_after_load(folder, mmap=False), "rss_mmap_mb": rss_after_load(folder, mmap=True),
             "open_s": open_seconds(folder, mmap=False), "open_mmap_s": open_seconds(folder, mmap=True),
             "disk_bytes": folder_bytes(folder, ("index.faiss", "vectors.npy", "labels.parquet")),
             "manifest_recipe": index.manifest["recipe"]}
    loaded = load_index(folder, verify=False)  # searched as read; mmap costs are in ``facts``
    rows = []
    for knobs in sweep or [{}]:
        search = lambda q, knobs=knobs: loaded.search_embeddings(q, k=K, **knobs).ids  # noqa: E731
        ids, qps = timed_batch(search, queries)
        p50, p99 = latency_ms(search, queries)
        rows.append({"system": "xmr", "recipe": recipe_label(index) + (
            f" efC{recipe.build['efConstruction']}" if "efConstruction" in recipe.build else "") + (
            f" layout{recipe.build['cluster_layout']}" if "cluster_layout" in recipe.build else "") + (
            " (auto)" if recipe.name == "auto" else ""),
            "params": " ".join(f"{k}={v}" for k, v in (knobs or index.candidates.knobs()).items())
            or "exact", "n": len(labels), "build_s": build, "index_bytes": size, "rss_mb": facts["rss_mb"],
            "recall_at_10": recall_at_k(ids, truth) if truth is not None else 1.0, "qps": qps, "p50_ms": p50,
            "p99_ms": p99, "_ids": ids})
    return rows, facts


def bench_peers(labels: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path, args) -> dict:
    """Every peer in ``args.systems`` through scripts/peers/ann.py, in its environment; a peer whose environment
    cannot be made is listed under ``failed`` with the installer's last line."""
    for name, array in (("labels", labels), ("queries", queries), ("truth", truth)):
        np.save(work / f"{name}.npy", array)
    merged: dict = {"versions": {}, "rows": [], "failed": {}}
    groups = {"peers": [s for s in args.systems if s not in SCANN_SYSTEMS],
              "peers-scann": [s for s in args.systems if s in SCANN_SYSTEMS]}
    for environment, systems in groups.items():
        if not systems:
            continue
        try:
            python = peers_python(environment)
        except subprocess.CalledProcessError as error:
            reason = (error.stderr or error.stdout or str(error)).strip().splitlines()[-1:]
            merged["failed"].update({system: f"{environment}: {' '.join(reason)}" for system in systems})
            continue
        out = work / f"{environment}.json"
        subprocess.run([str(python), str(ROOT / "scripts/peers/ann.py"), "--labels", str(work / "labels.npy"),
                        "--queries", str(work / "queries.npy"), "--truth", str(work / "truth.npy"), "--k", str(K),
                        "--threads", str(args.threads), "--systems", ",".join(systems), "--M", *map(str, args.M),
                        "--ef-construction", "200", "--ef", *map(str, args.ef), "--out", str(out),
                        *args.peer_options], check=True)
        if not out.is_file():  # ann.py printed its help or stopped early: say so rather than a traceback
            raise SystemExit(f"bench_index: scripts/peers/ann.py wrote no {out} (--peer-options {args.peer_options})")
        result = json.loads(out.read_text())
        for key in merged:
            merged[key].update(result.get(key, {})) if key != "rows" else merged[key].extend(result["rows"])
    return merged


def bench_encoding(texts: list[str], threads: int) -> list[dict]:
    """Texts/s of xmr's encoder vs plain SentenceTransformer.encode on the same texts, same threads.

    The ONNX / int8 backends need another environment (see scripts/bench_encoder_backends.py).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from xmr.encoders.bundled import resolve_model_location

    torch.set_num_threads(threads)
    plain = SentenceTransformer(resolve_model_location("all-MiniLM-L6-v2"), device="cpu")
    xmr_encoder = load_encoder("all-MiniLM-L6-v2", device="cpu")
    runs = [("sentence-transformers", "SentenceTransformer.encode (defaults: batch 32)",
             lambda: plain.encode(texts, normalize_embeddings=True)),
            ("xmr", "load_encoder('all-MiniLM-L6-v2').encode_queries", lambda: xmr_encoder.encode_queries(texts))]
    rows, reference = [], None
    plain.encode(texts[:256])
    xmr_encoder.encode_queries(texts[:256])  # warm-up
    for system, name, encode in runs * 2:  # alternate twice; keep each one's best pass
        started = time.perf_counter()
        vectors = encode()
        speed = len(texts) / (time.perf_counter() - started)
        reference = vectors if reference is None else reference
        previous = next((row for row in rows if row["encoder"] == name), None)
        if previous is None:
            rows.append({"system": system, "encoder": name, "texts_per_s": speed,
                         "note": f"mean cosine to plain ST {float(np.mean(np.sum(reference * vectors, axis=1))):.4f}"})
        else:
            previous["texts_per_s"] = max(previous["texts_per_s"], speed)
    return rows


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (recall, qps) points no other point beats in both, by rising recall."""
    best, kept = 0.0, []
    for recall, qps in sorted(points, key=lambda point: (-point[0], -point[1])):
        if qps > best:
            kept.append((recall, qps))
            best = qps
    return sorted(kept)


def plot(rows: list[dict], out: Path, n: int) -> None:
    """Recall/QPS: each peer's frontier over all its builds and settings, and each xmr recipe's own curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 6))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        name = f"xmr: {row['recipe']}" if row["system"] == "xmr" else f"{row['system']} (frontier of all builds)"
        series.setdefault(name, []).append((row["recall_at_10"], row["qps"]))
    for name, points in sorted(series.items()):
        points = frontier(points)
        style = ("o-" if name.startswith("xmr") else "^--") if len(points) > 1 else "s"
        axis.plot(*zip(*points, strict=True), style, label=name, markersize=4)
    axis.axvline(0.95, color="grey", linewidth=0.8)
    axis.set_xlim(0.5, 1.005)
    axis.set_xlabel("recall@10 vs exact")
    axis.set_ylabel("queries/s (batch of 2,000)")
    axis.set_yscale("log")
    axis.set_title(f"PyPI summaries, MiniLM 384-d, n = {n:,}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(out / "recall_qps.png", dpi=110)
    plt.close(figure)


def nprobe_sweep(recipe: IndexRecipe, labels: np.ndarray) -> list[dict]:
    """``NPROBE_SWEEP``, doubled on up to the recipe's ``{nprobe_deep}`` where that is deeper (512 at 4,096 lists)."""
    probes, deepest = list(NPROBE_SWEEP), deep_probes(recipe.resolved(*labels.shape).factory)
    while probes[-1] < deepest:
        probes.append(2 * probes[-1])
    return [{"nprobe": value} for value in probes]


def xmr_plans(labels: np.ndarray, m_values: list[int],
              ef_values: list[int] = EF_SWEEP) -> list[tuple[IndexRecipe, list[dict], dict]]:
    """The xmr recipes and their knob sweeps: HNSW at every --M and --ef (efConstruction 200, as the presets; the
    HNSW peers' grid), the quantised graph and the fast-scan IVF lists with C++ refinement, the IVF recipes, the
    compressed refine recipe and ``auto`` under 1/4 of Flat."""
    ef = [{"efSearch": value} for value in ef_values]
    hnsw = [(PRESETS[f"hnsw{m}"] if f"hnsw{m}" in PRESETS else IndexRecipe(f"hnsw{m}", f"HNSW{m}", PRESETS[
        "hnsw32"].build), ef, {}) for m in m_values]
    refine_ef = [{"efSearch": value, "k_factor_rf": factor} for factor in (1, 2, 4) for value in (16, 24, 32, 48, 64,
                                                                                                  96, 128)]
    refine_ivf = [{"nprobe": value, "k_factor_rf": factor} for factor in (5, 10, 20) for value in (8, 16, 32, 64, 128,
                                                                                                   256)]
    fastscan = [{"nprobe": value, "k_factor_rf": factor} for factor in (10, 20)
                for value in (16, 24, 32, 48, 64, 96, 128, 192, 256)]
    return [*hnsw, (PRESETS["hnsw32-sq8-refine"], refine_ef, {}), (PRESETS["ivf-fastscan-refine"], fastscan, {}),
            *[(PRESETS[name], nprobe_sweep(PRESETS[name], labels), {}) for name in ("ivf-sq8", "ivf-sq6", "ivf-pq")],
            (PRESETS["ivf-pq-refine"], refine_ivf, {}),
            (IndexRecipe("ivf-pq-refine-sq4", "IVF{nlist},PQ{m4}x4fs,Refine(SQ4)"), refine_ivf, {}),
            (IndexRecipe("auto", "auto"), [], {"max_memory": int(labels.nbytes / 4), "target_recall": 0.95})]


def run_xmr(args, catalogue: LabelCatalogue, labels: np.ndarray, queries: np.ndarray, work: Path) -> dict:
    """The xmr half: Flat (the ground truth), raw FAISS Flat, every recipe of ``xmr_plans``; rows and facts."""
    rows, facts = [], {}
    exact, facts["flat"] = bench_xmr(PRESETS["flat"], [], catalogue, labels, queries, None, work)
    truth = exact[0].pop("_ids")
    rows += exact
    rows.append(bench_raw_faiss(labels, queries, truth, args.n))
    print(rows[-2:], flush=True)
    plans = [plan for plan in xmr_plans(labels, args.M, args.ef)
             if not args.recipes or plan[0].name in args.recipes]
    for recipe, sweep, options in plans:
        if recipe.name == "auto":
            options = {**options, "max_memory": parse_memory(args.max_memory)} if args.max_memory else options
            built, facts["auto"] = bench_xmr_auto(catalogue, labels, queries, truth, work, options)
        else:
            built, facts[recipe.name] = bench_xmr(recipe, sweep, catalogue, labels, queries, truth, work)
        for row in built:
            row.pop("_ids")
            print({key: row[key] for key in ("recipe", "params", "recall_at_10", "qps", "p50_ms")}, flush=True)
        rows += built
        shutil.rmtree(work / recipe.name, ignore_errors=True)
        write_json(xmr_file(args), {"rows": rows, "facts": facts})  # partial results
    encoding = [] if args.skip_encoding else bench_encoding(read_corpus(args.n)[1], args.threads)
    result = {"rows": rows, "facts": facts, "encoding": encoding}
    write_json(xmr_file(args), result)
    return result


def xmr_file(args) -> Path:
    """OUT/xmr.json, or OUT/xmr-<recipes>.json for a run of some recipes (merged by the report)."""
    return args.out / ("xmr-" + "+".join(args.recipes) + ".json" if args.recipes else "xmr.json")


def write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "xmr" / "bench-index")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "index")
    parser.add_argument("--max-memory", default="", help="memory budget for the auto recipe (default: 1/4 of Flat)")
    parser.add_argument("--part", choices=("all", "xmr", "peers", "memory", "report"), default="all",
                        help="memory: index-resident memory of Flat and the compressed recipes (OUT/memory.json)")
    parser.add_argument("--systems", default=",".join(PEERS), help=f"peers to run (default: {','.join(PEERS)})")
    parser.add_argument("--M", type=int, nargs="+", default=[16, 32, 64], help="HNSW links per node, xmr and peers")
    parser.add_argument("--ef", type=int, nargs="+", default=EF_SWEEP,
                        help="search beam sweep of the HNSW peers and xmr's HNSW recipes")
    parser.add_argument("--peer-options", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the line goes to scripts/peers/ann.py (e.g. --usearch-dtypes f32)")
    parser.add_argument("--recipes", nargs="+", default=[], help="xmr recipes to run (default: all of xmr_plans; "
                        "written to OUT/xmr-<recipes>.json, which the report merges with OUT/xmr.json)")
    parser.add_argument("--skip-peers", action="store_true", help="same as --part xmr")
    parser.add_argument("--skip-encoding", action="store_true", help="leave out the encoder speed table")
    parser.add_argument("--embed-only", action="store_true", help="fill the embedding cache and stop")
    args = parser.parse_args()
    args.systems = [system for system in args.systems.split(",") if system]
    args.part = "xmr" if args.skip_peers and args.part == "all" else args.part
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    faiss.omp_set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part != "report":
        texts, query_texts = read_corpus(args.n)
        labels, queries = cached_embeddings(texts, query_texts, args.cache / "pypi-minilm", args.threads)
        if args.embed_only:
            return
        work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.cache))
        try:
            catalogue = LabelCatalogue.from_records([{"id": row, "text": text} for row, text in enumerate(texts)],
                                                    source=str(CORPUS))
            if args.part in ("all", "xmr"):
                run_xmr(args, catalogue, labels, queries, work)
            if args.part in ("all", "memory"):
                run_memory(args, catalogue, labels, queries, work)
            if args.part in ("all", "peers"):
                # exact top-10 by inner product: the same ground truth xmr's Flat gives the xmr half
                truth = faiss.knn(queries, labels, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
                write_json(args.out / "peers.json", merge_peers(args.out / "peers.json",
                                                                bench_peers(labels, queries, truth, work, args)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report_from_parts(args)


def merge_peers(path: Path, new: dict) -> dict:
    """``new`` peer results over those already in ``path`` (same n): a rerun replaces the rows of the builds it
    measured again and keeps the others, so a grid can be filled in over several runs."""
    if not path.is_file():
        return new
    old = json.loads(path.read_text())
    fresh = {(row["system"], row["recipe"]) for row in new["rows"]}
    rows = [row for row in old["rows"] if (row["system"], row["recipe"]) not in fresh] + new["rows"]
    failed = {name: why for name, why in {**old.get("failed", {}), **new["failed"]}.items()
              if name not in {row["system"] for row in rows}}
    return {"versions": {**old.get("versions", {}), **new["versions"]}, "rows": rows, "failed": failed}


def report_from_parts(args) -> None:
    """Merge OUT/xmr.json and OUT/peers.json (whichever exist) into the tables, the plot and the report."""
    parts = [json.loads(path.read_text()) for path in sorted(args.out.glob("xmr*.json"),
                                                                 key=lambda path: (path.name != "xmr.json", path.name))]
    if not any(path.name == "xmr.json" for path in args.out.glob("xmr*.json")):
        print(f"bench_index: no {args.out / 'xmr.json'} yet; the report needs the xmr half", flush=True)
        return
    xmr = {"rows": [], "facts": {}, "encoding": []}
    seen = set()
    for part in parts:  # xmr.json first: its rows win over a recipe run again on its own
        for row in part["rows"]:
            if (row["system"], row["recipe"], row["params"]) not in seen:
                seen.add((row["system"], row["recipe"], row["params"]))
                xmr["rows"].append(row)
        xmr["facts"] = {**part["facts"], **xmr["facts"]}
        xmr["encoding"] = xmr["encoding"] or part.get("encoding", [])
    peers = json.loads((args.out / "peers.json").read_text()) if (args.out / "peers.json").is_file() else {}
    rows = list(xmr["rows"])
    for row in peers.get("rows", []):
        rows.append({**row, "rss_mb": row["rss_mb"] - row["rss_base_mb"]})
    write_outputs(args, rows, xmr["facts"], peers.get("versions", {}), xmr.get("encoding", []),
                  peers.get("failed", {}))


def bench_xmr_auto(catalogue: LabelCatalogue, labels: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                   work: Path, options: dict) -> tuple[list[dict], dict]:
    """The ``auto`` recipe under the memory budget; it calibrates on its own pseudo-queries, never on the test ones."""
    started = time.perf_counter()
    index = build_index_from_embeddings(catalogue, labels, None, recipe="auto", **options)
    build = time.perf_counter() - started
    folder = index.save(work / "auto")
    loaded = load_index(folder, verify=False)
    search = lambda q: loaded.search_embeddings(q, k=K).ids  # noqa: E731
    ids, qps = timed_batch(search, queries)
    p50, p99 = latency_ms(search, queries)
    recipe = index.manifest["recipe"]
    row = {"system": "xmr", "recipe": f"auto -> {recipe_label(index)}",
           "params": " ".join(f"{k}={v}" for k, v in index.candidates.knobs().items()),
           "n": len(labels), "build_s": build, "index_bytes": folder_bytes(folder),
           "rss_mb": rss_after_load(folder, mmap=True), "recall_at_10": recall_at_k(ids, truth), "qps": qps,
           "p50_ms": p50, "p99_ms": p99, "_ids": ids}
    return [row], {"manifest_recipe": recipe, "budget_bytes": options["max_memory"]}


def write_outputs(args, rows: list[dict], facts: dict, versions: dict, encoding: list[dict],
                  failed: dict) -> None:
    out: Path = args.out
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (round(value, 4) if isinstance(value, float) else value) for key, value in
                             row.items()})
    if encoding:
        with open(out / "encode.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=("system", "encoder", "texts_per_s", "note"))
            writer.writeheader()
            writer.writerows(encoding)
    (out / "facts.json").write_text(json.dumps(facts, indent=2, default=str) + "\n", encoding="utf-8")
    plot(rows, out, args.n)
    write_report(args, rows, facts, versions, encoding, failed)


def of_factory(factory: str):
    """Whether a row is an xmr recipe built from ``factory`` (its label: the factory, then `` rerankN`` / ``efC`` /
    ``layoutN``)."""
    return lambda row: row["system"] == "xmr" and (row["recipe"] == factory or row["recipe"].startswith(factory + " "))


def best_at(rows: list[dict], keep, recall: float) -> dict | None:
    """The highest-QPS row among ``keep(row)`` rows with recall@10 >= ``recall``."""
    eligible = [row for row in rows if keep(row) and row["recall_at_10"] >= recall]
    return max(eligible, key=lambda row: row["qps"]) if eligible else None


def write_report(args, rows: list[dict], facts: dict, versions: dict, encoding: list[dict], failed: dict) -> None:
    flat = next(row for row in rows if row["system"] == "xmr" and row["recipe"] == "Flat")
    raw = next(row for row in rows if row["system"] == "faiss")
    is_xmr = lambda row: row["system"] == "xmr"  # noqa: E731
    is_peer = lambda row: row["system"] not in ("xmr", "faiss")  # noqa: E731
    lines = [f"# Index benchmark: PyPI summaries, n = {args.n:,}, {N_QUERIES:,} queries, k = {K}", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; "
             f"faiss {faiss.__version__}; peers {versions or 'skipped'}. Command: "
             f"`.venv/bin/python scripts/bench_index.py --n {args.n}` (here run as `--part peers` and `--part xmr` "
             "side by side, same vectors, queries and threads, then `--part report`). Recall is against exact "
             f"search; QPS is one batch of {N_QUERIES:,} on all threads; p50/p99 are single queries on one thread; "
             "rss_mb is the resident-set growth when a fresh process opens the folder and searches (xmr) or "
             "after the build (peers).", ""]
    if failed:
        lines += ["Peers that did not run: " + "; ".join(f"{name}: {why}" for name, why in failed.items()), ""]
    lines += ["## Targets (ratios from this run)", "",
              f"- xmr exact vs raw `IndexFlatIP`: {flat['qps']:.0f} vs {raw['qps']:.0f} QPS = "
              f"{flat['qps'] / raw['qps']:.2f}x (target >= 0.90)."]
    for recall in (0.95, 0.90):
        ours, peer = best_at(rows, is_xmr, recall), best_at(rows, is_peer, recall)
        if ours and peer:
            lines.append(f"- fastest at recall@10 >= {recall}: xmr {ours['recipe']} {ours['params']} "
                         f"{ours['qps']:.0f} QPS vs best peer {peer['system']} {peer['recipe']} {peer['params']} "
                         f"{peer['qps']:.0f} QPS = {ours['qps'] / peer['qps']:.2f}x (target > 1).")
        ours = min((row for row in rows if is_xmr(row) and row["recall_at_10"] >= recall), default=None,
                   key=lambda row: row["p50_ms"])
        peer = min((row for row in rows if is_peer(row) and row["recall_at_10"] >= recall), default=None,
                   key=lambda row: row["p50_ms"])
        if ours and peer:
            lines.append(f"- lowest one-query p50 at recall@10 >= {recall} (one thread): xmr {ours['recipe']} "
                         f"{ours['params']} {ours['p50_ms']:.3f} ms vs best peer {peer['system']} {peer['recipe']} "
                         f"{peer['params']} {peer['p50_ms']:.3f} ms = {peer['p50_ms'] / ours['p50_ms']:.2f}x.")
    memory = json.loads((args.out / "memory.json").read_text()) if (args.out / "memory.json").is_file() else {}
    memory_lines = []
    if memory:
        flat_mb = memory["flat"]["deepest"]["rss_mb"]
        memory_lines = ["", "## Index-resident memory (Flat and the compressed recipes)", "",
                        "RSS growth of a fresh process holding only faiss and numpy that opens `index.faiss`, searches "
                        "all queries and, for a re-ranking recipe, reads the `vectors.npy` rows the re-rank reads "
                        "(file-backed pages: they count while they stay cached), measured after the search's freed "
                        "buffers are handed back to the system (`malloc_trim`); peak: the high-water mark while the "
                        "2,000 queries are searched in one batch (search buffers included). `deepest`: the sweep "
                        "setting that reads the most candidates. Best QPS: the fastest point of that recipe at "
                        "recall@10 >= 0.95.",
                        "", "| recipe | factory | index MB | resident MB (preset knobs) | resident MB (deepest) | "
                        "of Flat | peak MB (deepest) | best QPS at recall >= 0.95 |",
                        "|---|---|---|---|---|---|---|---|"]
        for name, fact in memory.items():
            best = best_at(rows, of_factory(fact["factory"]), 0.95)
            shown = f"{best['qps']:.0f} ({best['params']}, recall {best['recall_at_10']:.3f})" if best else "-"
            memory_lines.append(f"| {name} | {fact['factory']} | {fact['index_bytes'] / 2**20:.1f} | "
                                f"{fact['preset']['rss_mb']:.1f} | {fact['deepest']['rss_mb']:.1f} | "
                                f"{fact['deepest']['rss_mb'] / flat_mb:.2f} | "
                                f"{fact['deepest'].get('peak_mb', float('nan')):.1f} | {shown} |")
        fitting = [(name, fact) for name, fact in memory.items() if name != "flat"
                   and fact["deepest"]["rss_mb"] <= flat_mb / 4]
        winners = [(name, best_at(rows, of_factory(fact["factory"]), 0.95)) for name, fact in fitting]
        winners = [(name, row) for name, row in winners if row]
        if winners:
            name, row = max(winners, key=lambda pair: pair[1]["qps"])
            resident = memory[name]["deepest"]["rss_mb"]
            lines.append(f"- compressed: {name} ({row['recipe']}) {row['params']}: index-resident "
                         f"{resident:.1f} MB = {resident / flat_mb:.2f} of Flat's {flat_mb:.1f} MB, recall@10 "
                         f"{row['recall_at_10']:.3f}, {row['qps']:.0f} QPS (target: recall >= 0.95 at <= 1/4 of "
                         "Flat's resident memory).")
        else:
            lines.append(f"- compressed: no recipe within 1/4 of Flat's index-resident {flat_mb:.1f} MB reached "
                         "recall@10 >= 0.95 (table below).")
    plain = next((row for row in encoding if row["system"] == "sentence-transformers"), None)
    for row in encoding:
        if plain and row["system"] == "xmr" and row["texts_per_s"] == row["texts_per_s"]:
            lines.append(f"- encoding {row['encoder']}: {row['texts_per_s']:.0f} texts/s = "
                         f"{row['texts_per_s'] / plain['texts_per_s']:.2f}x plain sentence-transformers.")
    lines += ["", "## Fastest point of each system and recipe at recall@10 >= 0.95", "",
              "| system | recipe | params | QPS | recall@10 | build s | RSS MB | index MB | p50 ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({(row["system"], row["recipe"]) for row in rows})
    winners = [best_at(rows, lambda row, g=group: (row["system"], row["recipe"]) == g, 0.95) for group in groups]
    for row in sorted((w for w in winners if w), key=lambda row: -row["qps"]):
        lines.append(f"| {row['system']} | {row['recipe']} | {row['params']} | {row['qps']:.0f} | "
                     f"{row['recall_at_10']:.3f} | {row['build_s']:.1f} | {row['rss_mb']:.0f} | "
                     f"{row['index_bytes'] / 2**20:.1f} | {row['p50_ms']:.2f} |")
    lines += memory_lines
    lines += ["", "## All points", "", "| system | recipe | params | build s | index MB | RSS MB | recall@10 | QPS | "
              "p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['system']} | {row['recipe']} | {row['params']} | {row['build_s']:.1f} | "
                     f"{row['index_bytes'] / 2**20:.0f} | {row['rss_mb']:.0f} | {row['recall_at_10']:.3f} | "
                     f"{row['qps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    lines += ["", "## Loading (verify off): read vs memory-mapped", "", "| recipe | open s | open s (mmap) | RSS MB | "
              "RSS MB (mmap) | p50 ms (mmap) | folder MB (index + vectors + labels) |", "|---|---|---|---|---|---|---|"]
    for name, fact in facts.items():
        if "open_s" in fact:
            lines.append(f"| {name} | {fact['open_s']:.2f} | {fact['open_mmap_s']:.2f} | {fact['rss_mb']:.0f} | "
                         f"{fact['rss_mmap_mb']:.0f} | {fact['p50_mmap_ms']:.2f} | {fact['disk_bytes'] / 2**20:.0f} |")
    if "auto" in facts:
        lines += ["", f"`auto` under {facts['auto']['budget_bytes'] / 1e6:.0f} MB: "
                  f"{json.dumps(facts['auto']['manifest_recipe'])}"]
    lines += ["", "## Encoding (2,000 query texts; ONNX / int8: eval/bench/encode/backends.md)", "",
              "| system | encoder | texts/s | note |", "|---|---|---|---|"]
    lines += [f"| {row['system']} | {row['encoder']} | {row['texts_per_s']:.1f} | {row['note']} |" for row in encoding]
    (args.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
