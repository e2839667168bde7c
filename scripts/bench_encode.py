"""Encoding throughput of an encoder on real short texts (PyPI summaries), on CPU or GPU.

    .venv/bin/python scripts/bench_encode.py --encoder smollm2-135m --n 2000
    .venv/bin/python scripts/bench_encode.py --encoder smollm2-135m --n 10000 --device cuda --dtype bfloat16

Appends one row per run to ``eval/bench/encode/results.csv``
(encoder, device, dtype, n, batch_size, seconds, texts_per_s, hardware).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import time
from pathlib import Path

import xmr

COLUMNS = ["encoder", "device", "dtype", "n", "batch_size", "seconds", "texts_per_s", "hardware"]


def hardware(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()} CPU threads, {platform.machine()}"


def read_texts(path: Path, n: int) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="decoder encoders: auto, float32, bfloat16, float16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default=os.environ.get("XMR_DATA", "../shared/data"))
    parser.add_argument("--out", default="eval/bench/encode/results.csv")
    args = parser.parse_args()

    options = {"device": args.device, "batch_size": args.batch_size}
    encoder = xmr.load_encoder(args.encoder, **options)
    if args.dtype != "auto" and "dtype" in encoder.config():
        encoder = xmr.load_encoder(args.encoder, dtype=args.dtype, **options)
    texts = read_texts(Path(args.data) / "pypi-summaries" / "corpus.jsonl.gz", args.n)
    encoder.encode_labels(texts[:64])  # warm-up
    tick = time.perf_counter()
    encoder.encode_labels(texts)
    seconds = time.perf_counter() - tick
    backbone = getattr(encoder, "backbone", None)
    dtype = str(next(backbone.parameters()).dtype).removeprefix("torch.") if backbone is not None else "float32"
    row = {"encoder": args.encoder, "device": args.device, "dtype": dtype,
           "n": len(texts), "batch_size": args.batch_size, "seconds": round(seconds, 2),
           "texts_per_s": round(len(texts) / seconds, 1), "hardware": hardware(args.device)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(row)


if __name__ == "__main__":
    main()
