"""GPU benchmark, prepared for a machine with a CUDA device: exact search and encoding throughput on GPU vs CPU.

    .venv/bin/python scripts/bench_gpu.py                        # 1M x 384 labels, 10,000 queries
    .venv/bin/python scripts/bench_gpu.py --labels 20000 --queries 500 --out /tmp/gpu   # a quick check

Three parts, each against the CPU baseline measured in the same run:

1. exact top-k by inner product over ``--labels`` x 384 unit vectors (seeded Gaussian, normalised; the shape of the
   MiniLM catalogue) with xmr's torch search (``xmr.index.torch_exact.TorchExactSearch``) in fp16 and bf16 on the GPU;
2. FAISS-GPU (``GpuIndexFlatIP``, fp32 and fp16 storage) against CPU ``IndexFlatIP`` on the same vectors; recall@10
   of every GPU result against the CPU one (fp16 storage rounds scores, so ties may swap);
3. encoding throughput of the bundled MiniLM (``xmr.load_encoder``) on ``--texts`` PyPI summaries: CPU fp32, GPU fp32
   and GPU bf16 (the model cast with ``torch.Tensor.to(bfloat16)``), with the mean cosine of each to the CPU vectors.

Without a CUDA device (or without faiss-gpu) the GPU parts are skipped with a line saying why, and the CPU
baselines still run, so the script runs anywhere. Writes OUT/{results.csv, report.md} (default eval/bench/gpu).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xmr.index.calibration import recall_at_k  # noqa: E402
from xmr.index.gpu import faiss_gpus  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "pypi-summaries" / "corpus.jsonl.gz"
K = 10
COLUMNS = ("part", "system", "device", "dtype", "items", "seconds", "per_s", "recall_at_10", "note")


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed(run: Callable[[], object], repeats: int = 2) -> tuple[object, float]:
    """Result of ``run`` and its best wall time over ``repeats`` calls (the first also warms up)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return result, best


def cuda_device() -> str | None:
    """Why the GPU parts cannot run, or None when torch sees a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def search_rows(labels: np.ndarray, queries: np.ndarray, skip: str | None) -> list[dict]:
    """Parts 1 and 2: CPU Flat, torch exact fp16/bf16, FAISS-GPU fp32/fp16; recall against CPU Flat."""
    cpu = faiss.IndexFlatIP(labels.shape[1])
    cpu.add(labels)
    (_, truth), seconds = timed(lambda: cpu.search(queries, K))
    rows = [{"part": "search", "system": "faiss IndexFlatIP", "device": "cpu", "dtype": "float32",
             "items": len(queries), "seconds": seconds, "per_s": len(queries) / seconds, "recall_at_10": 1.0,
             "note": f"{faiss.omp_get_max_threads()} threads, {len(labels):,} labels"}]
    if skip:
        print(f"bench_gpu: skipping torch and FAISS-GPU search: {skip}", flush=True)
        return rows
    import torch

    from xmr.index.torch_exact import TorchExactSearch

    ids = np.arange(len(labels), dtype=np.int64)
    for dtype in ("float16", "bfloat16"):
        search = TorchExactSearch(labels, ids, device="cuda", dtype=dtype)

        def run(search: TorchExactSearch = search) -> np.ndarray:
            found = search.search(queries, K)[0]
            torch.cuda.synchronize()
            return found

        found, seconds = timed(run)
        rows.append({"part": "search", "system": "xmr TorchExactSearch", "device": "cuda", "dtype": dtype,
                     "items": len(queries), "seconds": seconds, "per_s": len(queries) / seconds,
                     "recall_at_10": recall_at_k(found, truth), "note": torch.cuda.get_device_name()})
        del search
        torch.cuda.empty_cache()
    if faiss_gpus() == 0:
        print("bench_gpu: skipping FAISS-GPU: this faiss has no GPU support (faiss-gpu not installed)", flush=True)
        return rows
    resources = faiss.StandardGpuResources()
    for use_float16 in (False, True):
        options = faiss.GpuClonerOptions()
        options.useFloat16 = use_float16
        gpu = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatIP(labels.shape[1]), options)
        gpu.add(labels)
        (_, found), seconds = timed(lambda gpu=gpu: gpu.search(queries, K))
        rows.append({"part": "search", "system": "faiss GpuIndexFlatIP", "device": "cuda",
                     "dtype": "float16" if use_float16 else "float32", "items": len(queries), "seconds": seconds,
                     "per_s": len(queries) / seconds, "recall_at_10": recall_at_k(found, truth), "note": ""})
        del gpu
    return rows


def read_texts(count: int) -> list[str]:
    if not CORPUS.is_file():
        raise SystemExit(f"bench_gpu: {CORPUS} not found (the PyPI summaries of ../shared/data)")
    texts = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            if len(texts) == count:
                break
    return texts


def encoding_rows(texts: list[str], skip: str | None, cpu_threads: int) -> list[dict]:
    """Part 3: MiniLM texts/s on CPU fp32, then GPU fp32 and bf16, each with its mean cosine to the CPU vectors."""
    import torch

    from xmr.encoders import load_encoder

    torch.set_num_threads(cpu_threads)
    runs = [("cpu", "float32")] + ([] if skip else [("cuda", "float32"), ("cuda", "bfloat16")])
    if skip:
        print(f"bench_gpu: skipping GPU encoding: {skip}", flush=True)
    rows, reference = [], None
    for device, dtype in runs:
        encoder = load_encoder("all-MiniLM-L6-v2", device=device, batch_size=256 if device == "cuda" else 32)
        encoder.model.to(getattr(torch, dtype))
        encoder.encode_queries(texts[:64])  # warm-up
        vectors, seconds = timed(lambda encoder=encoder: encoder.encode_queries(texts), repeats=1)
        reference = vectors if reference is None else reference
        cosine = float(np.mean(np.sum(reference * vectors, axis=1)))
        rows.append({"part": "encode", "system": "xmr all-MiniLM-L6-v2", "device": device, "dtype": dtype,
                     "items": len(texts), "seconds": seconds, "per_s": len(texts) / seconds, "recall_at_10": "",
                     "note": f"mean cosine to CPU fp32 {cosine:.4f}"})
        del encoder
    return rows


def write(out: Path, rows: list[dict], args: argparse.Namespace, skip: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()})
    baseline = {row["part"]: row["per_s"] for row in rows if row["device"] == "cpu"}
    lines = [f"# GPU benchmark: exact search over {args.labels:,} x {args.dim} and MiniLM encoding", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; faiss {faiss.__version__} "
             f"({faiss_gpus()} GPUs); GPU parts: {'skipped: ' + skip if skip else 'run'}. Command: "
             f"`.venv/bin/python scripts/bench_gpu.py --labels {args.labels} --queries {args.queries} "
             f"--texts {args.texts}`. Speed-up is against the CPU row of the same part, this run.", "",
             "| part | system | device | dtype | items | seconds | per s | x CPU | recall@10 | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        recall = f"{row['recall_at_10']:.4f}" if isinstance(row["recall_at_10"], float) else ""
        lines.append(f"| {row['part']} | {row['system']} | {row['device']} | {row['dtype']} | {row['items']:,} | "
                     f"{row['seconds']:.3f} | {row['per_s']:.0f} | {row['per_s'] / baseline[row['part']]:.1f} | "
                     f"{recall} | {row['note']} |")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--texts", type=int, default=20_000, help="PyPI summaries encoded; 0 skips encoding")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "gpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    faiss.omp_set_num_threads(args.threads)
    skip = cuda_device()
    labels = unit_vectors(args.labels, args.dim, seed=0)
    queries = unit_vectors(args.queries, args.dim, seed=1)
    rows = search_rows(labels, queries, skip)
    del labels
    if args.texts:
        rows += encoding_rows(read_texts(args.texts), skip, args.threads)
    write(args.out, rows, args, skip)


if __name__ == "__main__":
    main()
