"""Does ``recipe="auto"``'s recall calibration hold on real queries? Recall@10 per search knob for real test
queries and for each pseudo-query family, and the knob each rule picks for a target, on two catalogues.

    .venv/bin/python scripts/bench_calibration.py [--target 0.95]

Catalogues: the first 50,000 PyPI labels with their 2,000 real queries (vectors from ``scripts/bench_index.py``'s
cache, encoded there on first use) and TIBKAT's 26,983 GND headings with 1,000 seeded test records (English records,
German headings: queries far from every label), both the bundled MiniLM. Per index recipe the table gives each knob
value's recall for the real queries and for the two families of ``xmr.index.calibration``, then what the old rule
(midpoints only) and the new one (the lowest family) pick and the real queries' recall there. Writes
``eval/bench/calibration/{README.md,results.json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_index import cached_embeddings, read_corpus  # noqa: E402  (scripts/ on the path)

import xmr  # noqa: E402
from xmr.catalogue import LabelCatalogue  # noqa: E402
from xmr.datasets import read_instances  # noqa: E402
from xmr.encoders.vector_cache import encode_cached  # noqa: E402
from xmr.index import build_index_from_embeddings  # noqa: E402
from xmr.index.calibration import CALIBRATION_VALUES, PSEUDO_QUERIES, recall_at_k  # noqa: E402
from xmr.train.auto import ENCODER  # noqa: E402

RECIPES = {"hnsw32": "efSearch", "ivf-sq6": "nprobe"}
DEEPEST = 512  # knob values swept: calibrate()'s own grid up to here
SAMPLE = 500  # pseudo-queries per family, as calibrate()


def pypi(count: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` PyPI label vectors and the real query vectors (bench_index's cache)."""
    return cached_embeddings(*read_corpus(count), cache / "pypi-minilm", threads=2)


def tibkat(queries: int) -> tuple[np.ndarray, np.ndarray]:
    """TIBKAT's heading vectors and ``queries`` seeded test records, through the vector cache."""
    folder = ROOT.parent / "shared/data/tibkat_gnd_en"
    encoder = xmr.load_encoder(ENCODER)
    labels = encode_cached(encoder, LabelCatalogue.from_file(folder / "labels.jsonl").items(), "label")
    test = read_instances(folder / "test.jsonl")
    rows = np.random.default_rng(0).choice(len(test), queries, replace=False)
    return labels, encode_cached(encoder, [test.texts[row] for row in rows], "query")


def sweep(labels: np.ndarray, families: dict[str, np.ndarray], recipe: str) -> dict[str, dict[int, float]]:
    """Recall@10 against exact search per knob value and query family."""
    knob = RECIPES[recipe]
    values = [value for value in CALIBRATION_VALUES[knob] if value <= DEEPEST]
    catalogue = LabelCatalogue.from_records([{"id": row, "text": str(row)} for row in range(len(labels))])
    index = build_index_from_embeddings(catalogue, labels, None, recipe=recipe)
    found = {}
    for name, queries in families.items():
        truth = faiss.knn(queries, labels, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
        found[name] = {value: recall_at_k(index.search_embeddings(queries, k=10, **{knob: value}).ids, truth)
                       for value in values}
    return found


def first_reaching(curve: dict[int, float], target: float) -> int:
    return next((value for value, got in curve.items() if got >= target), max(curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--out", default=str(ROOT / "eval/bench/calibration"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/xmr/bench-index",
                        help="bench_index.py's vector cache")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    results = {}
    for name, (labels, real) in (("pypi-50k", pypi(50_000, args.cache)), ("tibkat", tibkat(1000))):
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        families = {"real": np.ascontiguousarray(real, dtype=np.float32),
                    **{family: make(labels, SAMPLE, 0) for family, make in PSEUDO_QUERIES.items()}}
        nearest = {family: float(np.mean(faiss.knn(queries, labels, 1, metric=faiss.METRIC_INNER_PRODUCT)[0]))
                   for family, queries in families.items()}
        for recipe in RECIPES:
            curves = sweep(labels, families, recipe)
            curves["lowest"] = {value: min(curves[family][value] for family in PSEUDO_QUERIES)
                                for value in curves["real"]}
            old, new = first_reaching(curves["midpoints"], args.target), first_reaching(curves["lowest"], args.target)
            results[f"{name} {recipe}"] = {
                "labels": len(labels), "knob": RECIPES[recipe], "nearest_label_cosine": nearest,
                "curves": curves, "old_pick": old, "old_real_recall": curves["real"][old],
                "new_pick": new, "new_real_recall": curves["real"][new]}
            print(name, recipe, "old", old, round(curves["real"][old], 3), "new", new,
                  round(curves["real"][new], 3), flush=True)
    write(Path(args.out), results, args.target)


def write(out: Path, results: dict, target: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Recall calibration of `recipe=\"auto\"` against real queries", "",
             f"Produced by `scripts/bench_calibration.py --target {target}` (1 FAISS thread). Recall@10 against "
             "exact search per knob value, for real test queries and the two pseudo-query families of "
             "`xmr.index.calibration` (500 each); `lowest` is what calibration now requires to reach the target. "
             "Old rule: midpoints only (before this change); new rule: the lowest family.", "",
             "| catalogue | recipe | old pick | real recall there | new pick | real recall there |",
             "|---|---|---|---|---|---|"]
    for key, result in results.items():
        name, recipe = key.split(" ")
        lines.append(f"| {name} ({result['labels']:,} labels) | {recipe} | {result['knob']} {result['old_pick']} | "
                     f"{result['old_real_recall']:.3f} | {result['knob']} {result['new_pick']} | "
                     f"{result['new_real_recall']:.3f} |")
    for key, result in results.items():
        curves = result["curves"]
        values = list(curves["real"])
        lines += ["", f"## {key}: recall@10 by {result['knob']}", "",
                  "| queries | mean cosine to nearest label | " + " | ".join(str(v) for v in values) + " |",
                  "|---|---|" + "---|" * len(values)]
        for family, curve in curves.items():
            cosine = result["nearest_label_cosine"].get(family)
            lines.append(f"| {family} | {'–' if cosine is None else f'{cosine:.3f}'} | "
                         + " | ".join(f"{curve[v]:.3f}" for v in values) + " |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
