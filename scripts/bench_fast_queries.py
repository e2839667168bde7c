"""Fast query paths: queries/s and quality of each way to encode queries, against today's torch encoder, in one run.

    .venv/bin/python scripts/bench_fast_queries.py --reuters runs/reuters-fast --esco runs/esco-minilm-fast

The index folders are ordinary xmr indexes that carry a fast query encoder (``xmr fast-queries``): Reuters is the
fine-tuned encoder with learned label vectors (``training/reuters-labelvectors.yaml``), fast queries fitted on the
7,770 training articles; ESCO the bundled MiniLM over the 13,896 skills, fast queries fitted on the skill texts and
the validation sentences. Each variant encodes every test query once (timed, after a warm-up on 32 queries), and the
vectors are scored by ``xmr.evaluate`` against the same index: P@1/PSP@1 (Reuters, propensities from train), RP@10
per subset (ESCO). Variants that only change batching give the same vectors, so they are timed on the first
``--timing-sample`` queries and their cosine to the baseline is reported instead of re-scoring. Every library runs
on ``--threads`` threads (torch; ONNX Runtime intra-op, which xmr sets from torch's; model2vec in-process).
Writes OUT/{results.csv, report.md}.

Variants: torch at the index's ``max_seq_length`` (the baseline) and shorter ones; length-bucketed batching
(sentence-transformers sorts each ``encode`` call by length: the baseline) against file-order batches and larger
sorted batches; ONNX Runtime dynamic int8 (``xmr fast-queries --method onnx-int8``: ``xmr.encoders.onnx_runtime``,
exported into the encoder's model folder once); static embeddings distilled with model2vec
without fitting, and the index's fitted fast query encoder; and combinations (int8 with a shorter length, static
with a shorter length). ``--reuters-students``/``--esco-students`` add index folders whose fast queries are
distilled students (``xmr fast-queries --method student``): each is scored as recorded (ONNX int8) and on torch.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xmr.datasets import read_instances  # noqa: E402
from xmr.encoders import load_encoder  # noqa: E402
from xmr.encoders.distill import distill_static  # noqa: E402
from xmr.evaluation import evaluate  # noqa: E402
from xmr.index import load_index  # noqa: E402
from xmr.index.fast_queries import onnx_int8_queries  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
REUTERS = DATA / "reuters21578-modapte"
ESCO = DATA / "esco-skill-extraction"
COLUMNS = ("dataset", "variant", "encoder", "max_length", "queries_timed", "seconds", "queries_per_s", "speedup",
           "cosine_to_baseline", "P@1", "PSP@1", "RP@10", "RP@10 house", "RP@10 tech", "RP@10 techwolf")
WARMUP = 32
SHORT_PASS_S = 2.0


def file_order(encode: Callable[[Sequence[str]], np.ndarray], batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """No length bucketing: batches of ``batch_size`` in file order (each call sorts only within its batch)."""
    return lambda texts: np.concatenate([encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])


def timed(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[np.ndarray, float]:
    """One timed pass after a warm-up; a pass under ``SHORT_PASS_S`` (static lookups) is repeated and the median
    kept, since one scheduler hiccup on a shared machine is a large fraction of it."""
    encode(texts[:WARMUP])
    passes = []
    while not passes or (sum(passes) < SHORT_PASS_S and len(passes) < 5):
        started = time.perf_counter()
        vectors = encode(texts)
        passes.append(time.perf_counter() - started)
    return np.asarray(vectors, dtype=np.float32), float(np.median(passes))


def with_length(encoder, length: int | None):
    """The torch teacher truncating at ``length`` tokens (its model's ``max_seq_length``), restored afterwards."""
    def encode(texts: Sequence[str]) -> np.ndarray:
        saved = encoder.model.max_seq_length
        encoder.model.max_seq_length = length or saved
        try:
            return encoder.encode_queries(list(texts))
        finally:
            encoder.model.max_seq_length = saved
    return encode


def static_with_length(encoder, length: int | None):
    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(encoder.model.encode(list(texts), max_length=length, batch_size=encoder.batch_size,
                                               use_multiprocessing=False), dtype=np.float32)
    return encode


def wait_for_fast_queries(index, folder: Path | None, wait_s: float):
    """The fast query encoder of ``folder`` (once it exists: ``xmr fast-queries`` may still be writing it), or the
    index's own; attached to ``index``, which refuses one not distilled from its encoder."""
    if folder is None:
        return index.fast_query_encoder
    deadline = time.monotonic() + wait_s
    while not (folder / "manifest.json").is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{folder}: no index folder after {wait_s:.0f} s")
        time.sleep(10)
    fast = load_index(folder).fast_query_encoder
    index.attach_fast_queries(fast)
    return fast


def run_dataset(name: str, folder: Path, fast_folder: Path | None, students: Sequence[Path], test: Path,
                train: Path | None, group_by: str | None, args: argparse.Namespace, scratch: Path) -> list[dict]:
    lengths, sample = args.lengths, args.timing_sample
    index = load_index(folder)
    teacher = index.encoder
    instances = read_instances(test)
    if args.queries and args.queries < len(instances):  # a seeded sample of the test split, the same for all rows
        rows_kept = np.sort(np.random.default_rng(0).choice(len(instances), args.queries, replace=False))
        instances = instances.subset(rows_kept.tolist(), f"{test.name} sample of {args.queries}")
    texts = [item if isinstance(item, str) else item["text"] for item in instances.items("text")]
    base_length = teacher.max_seq_length
    rows: list[dict] = []
    baseline: dict = {}

    def score(variant: str, kind: str, length, encode, vectors_only_sample: bool = False) -> None:
        subset = texts[:sample] if vectors_only_sample else texts
        vectors, seconds = timed(encode, subset)
        row = {"dataset": name, "variant": variant, "encoder": kind, "max_length": length,
               "queries_timed": len(subset), "seconds": round(seconds, 2),
               "queries_per_s": round(len(subset) / seconds, 1)}
        if not baseline:
            baseline.update(qps=row["queries_per_s"], vectors=vectors)
        row["speedup"] = round(row["queries_per_s"] / baseline["qps"], 2)
        reference = baseline["vectors"][:len(vectors)]
        row["cosine_to_baseline"] = round(float(np.mean(np.sum(vectors * reference, axis=1) / np.maximum(
            np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1), 1e-12))), 4)
        if not vectors_only_sample:
            result = evaluate(index, instances, ks=(1, 10), train=train, group_by=group_by, query_vectors=vectors)
            metrics = result["metrics"]
            row["P@1"] = round(100 * metrics["P@1"], 2)
            if "PSP@1" in metrics:
                row["PSP@1"] = round(100 * metrics["PSP@1"], 2)
            row["RP@10"] = round(100 * metrics["RP@10"], 2)
            for group, values in (result.get("groups") or {}).items():
                row[f"RP@10 {group}"] = round(100 * values["metrics"]["RP@10"], 2)
        rows.append(row)
        print(row, flush=True)

    score("torch (today)", "torch fp32", base_length, with_length(teacher, None))
    for length in lengths:
        if length < base_length:
            score(f"torch, max_seq_length {length}", "torch fp32", length, with_length(teacher, length))
    score("torch, file-order batches of 32 (no length bucketing)", "torch fp32", base_length,
          file_order(with_length(teacher, None), 32), vectors_only_sample=True)
    saved_batch = teacher.batch_size
    teacher.batch_size = 128
    score("torch, length-sorted batches of 128", "torch fp32", base_length, with_length(teacher, None),
          vectors_only_sample=True)
    teacher.batch_size = saved_batch
    int8 = onnx_int8_queries(teacher)  # what xmr fast-queries --method onnx-int8 records
    score("ONNX Runtime int8", "ONNX Runtime int8", base_length, with_length(int8, None))
    for length in lengths:
        if length < base_length:
            score(f"ONNX Runtime int8, max_seq_length {length}", "ONNX Runtime int8", length,
                  with_length(int8, length))
    for student_folder in students:
        student = wait_for_fast_queries(index, student_folder, args.wait)
        layers = f"student, layers {' '.join(map(str, student.layers))}"
        score(f"{layers}, ONNX Runtime int8 ({student_folder.name})", "student int8", student.max_seq_length,
              with_length(student, None))
        on_torch = load_encoder(student.config() | {"backend": "torch", "quantize": None})
        score(f"{layers}, torch ({student_folder.name})", "student fp32", student.max_seq_length,
              with_length(on_torch, None))
    if args.plain:
        started = time.perf_counter()
        plain = distill_static(teacher, scratch / f"{name}-static-plain")
        print(f"{name}: model2vec distillation without fitting took {time.perf_counter() - started:.0f} s",
              flush=True)
        score("static, model2vec distill only", "static (model2vec)", plain.max_length,
              static_with_length(plain, None))
    fast = wait_for_fast_queries(index, fast_folder, args.wait)
    recipe = fast.distillation or {}
    score(f"static, fast queries (fitted on {recipe.get('corpus', '?')} texts)", "static (model2vec, fitted)",
          fast.max_length, static_with_length(fast, None))
    for length in lengths:
        score(f"static fitted, max_length {length}", "static (model2vec, fitted)", length,
              static_with_length(fast, length))
    return rows


def write_dataset(rows: list[dict], out: Path, dataset: str, args: argparse.Namespace, command: str) -> None:
    """OUT/<dataset>.csv and the run's settings in OUT/<dataset>.md; then OUT/results.csv + report.md over all."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{dataset}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})
    queries = f"a seeded sample of {args.queries} test queries" if args.queries else "every test query"
    (out / f"{dataset}.md").write_text(
        f"{dataset}: `{command}`; {queries}; {args.threads} thread(s) for every library (torch.set_num_threads, "
        f"ONNX Runtime intra-op, model2vec in-process); torch {torch.__version__}, {platform.machine()}; load "
        f"average before the run {args.load_before}. Batching rows are timed on the first {args.timing_sample} of "
        "those queries.\n", encoding="utf-8")
    write_report(out)


def write_report(out: Path) -> None:
    rows = []
    for path in sorted(out.glob("*.csv")):
        if path.name != "results.csv":
            with open(path, encoding="utf-8") as handle:
                rows += list(csv.DictReader(handle))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Fast query paths: queries/s and quality against today's torch encoder", "",
             "Speed-up = queries/s over the dataset's first row (today's torch encoder), measured in the same run on "
             "a 2-core machine (the load average before each run is in its settings line; ratios are within one "
             "run). Cosine: mean cosine of each variant's query vectors to the baseline's. Quality in percent, on "
             "the same queries and index for every row.", ""]
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        subset = [row for row in rows if row["dataset"] == dataset]
        settings = out / f"{dataset}.md"
        if settings.is_file():
            lines += [settings.read_text(encoding="utf-8").strip(), ""]
        quality = ["P@1", "PSP@1"] if dataset == "reuters" else ["RP@10", "RP@10 house", "RP@10 tech",
                                                                  "RP@10 techwolf"]
        header = ["variant", "max length", "queries/s", "speed-up", "cosine to baseline", *quality]
        lines += [f"## {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in subset:
            values = [row["variant"], row["max_length"], row["queries_per_s"], f"{row['speedup']}x",
                      row["cosine_to_baseline"], *(row.get(key, "–") for key in quality)]
            lines.append("| " + " | ".join(str(value) if value != "" else "–" for value in values) + " |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuters", type=Path, help="Reuters index folder with fast queries")
    parser.add_argument("--esco", type=Path, help="ESCO index folder with fast queries")
    parser.add_argument("--reuters-fast", type=Path, help="take Reuters' fast queries from this folder (default: the "
                        "index's own); waits up to --wait seconds for it to appear")
    parser.add_argument("--esco-fast", type=Path, help="the same for ESCO")
    parser.add_argument("--reuters-students", type=Path, nargs="*", default=[],
                        help="Reuters index folders with student fast queries (xmr fast-queries --method student)")
    parser.add_argument("--esco-students", type=Path, nargs="*", default=[], help="the same for ESCO")
    parser.add_argument("--wait", type=float, default=3600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="*", default=[64, 32], help="shorter max lengths to try")
    parser.add_argument("--timing-sample", type=int, default=300, help="queries timed for the batching rows")
    parser.add_argument("--queries", type=int, help="score a seeded sample of this many test queries (all: omit)")
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip the distil-only static row (a full model2vec distillation)")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "fast-queries")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.load_before = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    command = "python scripts/bench_fast_queries.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="xmr-bench-fast-") as scratch:
        if args.reuters:
            rows = run_dataset("reuters", args.reuters, args.reuters_fast, args.reuters_students,
                               REUTERS / "test.jsonl", REUTERS / "train.jsonl", None, args, Path(scratch))
            write_dataset(rows, args.out, "reuters", args, command)
        if args.esco:
            rows = run_dataset("esco", args.esco, args.esco_fast, args.esco_students, ESCO / "test.jsonl", None,
                               "subset", args, Path(scratch))
            write_dataset(rows, args.out, "esco", args, command)
    print(f"wrote {args.out}/results.csv, report.md")


if __name__ == "__main__":
    main()
