"""Encoder backends: texts/s and ESCO quality of MiniLM on PyTorch vs ONNX Runtime fp32 / int8, in one run.

    .venv/bin/python scripts/bench_encoder_backends.py

The ONNX rows are xmr's own backend (``xmr.encoders.onnx_runtime``: ``torch.onnx.export`` of the network, ONNX
Runtime's dynamic int8 quantisation, sentence-transformers' pooling), in the main environment.

Throughput: the 2,000 PyPI query texts of scripts/bench_index.py, each backend warmed up, one timed pass, the same
threads. Quality: the ESCO skill-extraction test split, exact search over all 13,896 skills, each backend encoding
both labels and queries. Writes eval/bench/encode/backends.{csv,md}.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "pypi-summaries" / "corpus.jsonl.gz"
ESCO = ROOT.parent / "shared" / "data" / "esco-skill-extraction"
BACKENDS = [("torch", None), ("onnx", None), ("onnx", "int8")]


def query_texts(n: int = 2000) -> list[str]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    return texts[-n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "encode")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    from xmr.catalogue import LabelCatalogue
    from xmr.encoders import load_encoder
    from xmr.evaluation import evaluate
    from xmr.index import build_index

    torch.set_num_threads(args.threads)
    load_before = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    texts = query_texts()
    catalogue = LabelCatalogue.from_file(ESCO / "labels.jsonl")
    rows, reference = [], None
    for backend, quantize in BACKENDS:
        encoder = load_encoder({"type": "sentence-transformers", "model": "all-MiniLM-L6-v2", "backend": backend,
                                "quantize": quantize, "device": "cpu"})
        encoder.encode_queries(texts[:256])  # warm-up (and the one-off export on first use)
        started = time.perf_counter()
        vectors = encoder.encode_queries(texts)
        seconds = time.perf_counter() - started
        reference = vectors if reference is None else reference
        index = build_index(catalogue, encoder, None)
        metrics = evaluate(index, ESCO / "test.jsonl", ks=(1, 5, 10))["metrics"]
        rows.append({"backend": backend, "quantize": quantize or "fp32", "texts_per_s": round(len(texts) / seconds, 1),
                     "cosine_to_torch": round(float((reference * vectors).sum(axis=1).mean()), 5),
                     **{name: round(100 * metrics[name], 2) for name in ("P@1", "P@5", "R@10", "RP@10")}})
        print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "backends.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch_row = rows[0]
    lines = ["# Encoder backends: bundled MiniLM on PyTorch vs ONNX Runtime", "",
             f"`.venv/bin/python scripts/bench_encoder_backends.py`; {args.threads} threads; 2,000 PyPI "
             f"summaries for texts/s; ESCO test (926 sentences, 13,896 skills, exact search) for quality. "
             f"torch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers "
             f"{sentence_transformers.__version__}, onnxruntime {onnxruntime.__version__}; load average before the "
             f"run {load_before}.", "",
             "| backend | weights | texts/s | speed-up | cosine to torch | P@1 | P@5 | R@10 | RP@10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        speed_up = row["texts_per_s"] / torch_row["texts_per_s"]
        lines.append(f"| {row['backend']} | {row['quantize']} | {row['texts_per_s']} | {speed_up:.2f}x | "
                     f"{row['cosine_to_torch']} | {row['P@1']} | {row['P@5']} | {row['R@10']} | {row['RP@10']} |")
    (args.out / "backends.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
