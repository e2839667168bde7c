"""How build time, memory and QPS grow with the catalogue: one table from several scripts/bench_index.py runs.

    .venv/bin/python scripts/bench_index_growth.py eval/bench/index-50k-peers eval/bench/index eval/bench/index-725k \
        --out eval/bench/index-growth.md

Reads RUN/results.csv of each run (any n, any systems) and writes, for every (system, recipe) present in at least
two runs: build seconds, RSS MB and the best QPS at recall@10 >= --recall at each n, and the growth factor from the
smallest to the largest n that row has, beside the growth of n itself. IVF list counts follow n (``{nlist}``), so a
recipe is matched across runs with its list count written ``IVF*``. Runs made on different days or under different
machine load are not comparable point by point; the report says which run each column comes from.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path


def read_run(folder: Path) -> list[dict]:
    path = folder / "results.csv"
    if not path.is_file():
        raise SystemExit(f"bench_index_growth: {path} not found (run scripts/bench_index.py --out {folder})")
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("n", "build_s", "rss_mb", "recall_at_10", "qps"):
            row[key] = float(row[key])
    return rows


def summary(rows: list[dict], recall: float) -> dict[tuple[str, str], dict]:
    """Per (system, recipe): build seconds and RSS of the build, best QPS at ``recall`` (None if never reached)."""
    out: dict[tuple[str, str], dict] = {}
    for row in rows:
        recipe = re.sub(r"IVF\d+", "IVF*", row["recipe"])
        entry = out.setdefault((row["system"], recipe), {"n": row["n"], "build_s": row["build_s"],
                                                         "rss_mb": row["rss_mb"], "qps": None})
        if row["recall_at_10"] >= recall and (entry["qps"] is None or row["qps"] > entry["qps"]):
            entry["qps"] = row["qps"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="output folders of scripts/bench_index.py")
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = sorted(((int(read_run(folder)[0]["n"]), folder, summary(read_run(folder), args.recall))
                   for folder in args.runs), key=lambda run: run[0])
    keys = sorted({key for _, _, table in runs for key in table}, key=lambda key: (key[0] != "xmr", key))
    sizes = " -> ".join(f"{n:,}" for n, _, _ in runs)
    lines = [f"# Index growth with the catalogue: n = {sizes}", "",
             "Runs: " + "; ".join(f"n = {n:,}: `{folder}`" for n, folder, _ in runs) + f". QPS: best batch QPS at "
             f"recall@10 >= {args.recall} ('-': not reached). Growth: the value at the largest n a row has / at its "
             "smallest, beside n's own growth between the two.", "",
             "| system | recipe | " + " | ".join(f"build s @{n:,} | RSS MB @{n:,} | QPS @{n:,}" for n, _, _ in runs)
             + " | n growth | build growth | RSS growth | QPS growth |",
             "|---|---|" + "---|---|---|" * len(runs) + "---|---|---|---|"]
    for key in keys:
        cells = [table.get(key) for _, _, table in runs]
        present = [cell for cell in cells if cell]
        if len(present) < 2:
            continue
        first, last = present[0], present[-1]
        qps_growth = f"{last['qps'] / first['qps']:.2f}x" if first["qps"] and last["qps"] else "-"
        row = [f"{cell['build_s']:.1f} | {cell['rss_mb']:.0f} | {cell['qps']:.0f}" if cell and cell["qps"] else
               (f"{cell['build_s']:.1f} | {cell['rss_mb']:.0f} | -" if cell else "| |") for cell in cells]
        growth = (f"{last['n'] / first['n']:.1f}x | {last['build_s'] / max(first['build_s'], 1e-9):.1f}x | "
                  f"{last['rss_mb'] / max(first['rss_mb'], 1e-9):.1f}x | {qps_growth}")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(row) + f" | {growth} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
