"""A/B of two xmr checkouts on the same index: batch QPS of Flat, HNSW32 and HNSW64, rounds alternating old/new.

    git worktree add ../xmr-old <commit>
    .venv/bin/python scripts/bench_index_versions.py --old ../xmr-old --out eval/bench/index-50k/versions.md

Uses the PyPI-summary embeddings that ``scripts/bench_index.py`` cached (first ``--n`` rows, its 2,000 queries). Each
checkout builds its own folders once (with its own code, in its own format), then every round runs one fresh process
per checkout that opens them and times batch searches (best of three per point), old and new alternating so that
machine noise falls on both. Writes a markdown table of the median QPS per point and the new/old ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
POINTS = {"flat": [None], "hnsw32": [16, 32, 64, 128], "hnsw64": [16, 32, 64, 128]}
MEASURE = """
import json, sys, time
from pathlib import Path
root, cache, work, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, root)
import numpy as np
from xmr.catalogue import LabelCatalogue
from xmr.index import build_index_from_embeddings, load_index
from xmr.index.recipes import PRESETS
labels = np.load(cache / "labels-000.npy", mmap_mode="r")[:n].astype(np.float32)
queries = np.load(cache / "queries.npy").astype(np.float32)
points = json.loads(sys.argv[5])
out = {}
for recipe, values in points.items():
    folder = work / recipe
    if not folder.exists():
        catalogue = LabelCatalogue.from_records([{"id": row, "text": f"label {row}"} for row in range(n)])
        build_index_from_embeddings(catalogue, labels, folder, recipe=PRESETS[recipe])
    index = load_index(folder, verify=False)
    for value in values:
        knobs = {} if value is None else {"efSearch": value}
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            index.search_embeddings(queries, k=10, **knobs)
            best = min(best, time.perf_counter() - started)
        out[f"{recipe} {value or 'exact'}"] = len(queries) / best
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the baseline (e.g. a git worktree)")
    parser.add_argument("--new", type=Path, default=ROOT)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "xmr" / "bench-index" / "pypi-minilm")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "bench" / "index-50k" / "versions.md")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as scratch:
        for _ in range(args.rounds):
            for name, root in (("old", args.old), ("new", args.new)):
                work = Path(scratch) / name
                work.mkdir(exist_ok=True)
                done = subprocess.run([sys.executable, "-c", MEASURE, str(root.resolve()), str(args.cache), str(work),
                                       str(args.n), json.dumps(POINTS)], check=True, capture_output=True, text=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(name, runs[name][-1], flush=True)
    commits = {name: subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() for name, root in (("old", args.old), ("new", args.new))}
    lines = [f"# Same index, two xmr versions: batch QPS (n = {args.n:,}, 2,000 queries, k = 10)", "",
             f"old = `{commits['old']}`, new = `{commits['new']}` (plus uncommitted changes, if any). Command: "
             f"`.venv/bin/python scripts/bench_index_versions.py --old {args.old}`. {args.rounds} rounds, old and new "
             "alternating, a fresh process per checkout per round; each cell is the median over rounds of the best of "
             "three batch searches.", "", "| recipe | knob | old QPS | new QPS | new / old |", "|---|---|---|---|---|"]
    for point in runs["old"][0]:
        old, new = median(run[point] for run in runs["old"]), median(run[point] for run in runs["new"])
        recipe, knob = point.split(" ")
        lines.append(f"| {recipe} | {'efSearch ' + knob if knob != 'exact' else 'exact'} | {old:,.0f} | {new:,.0f} "
                     f"| {new / old:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
