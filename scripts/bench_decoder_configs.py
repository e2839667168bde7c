"""Zero-shot quality of the bundled decoder (SmolLM2-135M) per prompt template and pooling (issue 18).

ViXML-style decoders are trained with mean pooling over a plain prompt; untrained, that ranks labels near chance. This
script measures each candidate configuration on selection splits drawn from the TRAIN files of several shared data
sets (never their test splits), so the configuration the bundled name resolves to is chosen by measurement and can
then be reported on test without having been tuned there:

    python scripts/bench_decoder_configs.py            # eval/bench/decoder-zero-shot/{results.csv,report.md}

Each configuration goes through ``xmr.load_encoder`` and ``xmr.build_index`` like a user's, so what is measured is
what a user gets. ``--queries`` sets the queries sampled per data set (seed 0).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from pathlib import Path

import xmr
from xmr.datasets import read_instances
from xmr.encoders.bundled import BUNDLED_DECODER_ZERO_SHOT, PROMPT_EOL
from xmr.evaluation import evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / "eval" / "bench" / "decoder-zero-shot"
CHAT = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
CONFIGS = {
    "plain-mean-eos": {"pooling": "mean"},  # the ViXML training default
    "plain-last-eos": {"pooling": "last_token"},
    "prompteol-last": {"query_template": PROMPT_EOL, "label_template": PROMPT_EOL, "append_eos": False,
                       "pooling": "last_token"},
    "prompteol-mean": {"query_template": PROMPT_EOL, "label_template": PROMPT_EOL, "append_eos": False,
                       "pooling": "mean"},
    # the same, truncating only the text so the prompt's "means in one word:" ending survives long texts
    "prompteol-last-tail": {"query_template": PROMPT_EOL, "label_template": PROMPT_EOL, "append_eos": False,
                            "keep_template_tail": True, "pooling": "last_token"},
    "prompteol-mean-tail": {"query_template": PROMPT_EOL, "label_template": PROMPT_EOL, "append_eos": False,
                            "keep_template_tail": True, "pooling": "mean"},
    "chat-mean": {"query_template": CHAT, "label_template": CHAT, "append_eos": False, "pooling": "mean"},
    "chat-last": {"query_template": CHAT, "label_template": CHAT, "append_eos": False, "pooling": "last_token"},
}
SETS = {  # data set -> (labels, the train split the selection queries are drawn from)
    "cooking": ("cooking_stackexchange/labels.jsonl", "cooking_stackexchange/train.jsonl"),
    "reuters": ("reuters21578-modapte/labels.jsonl", "reuters21578-modapte/train.jsonl"),
    "tibkat-mini": ("tibkat_gnd_en/labels.jsonl", "tibkat_gnd_en/train.jsonl"),
}


def selection(train: Path, count: int, catalogue: xmr.LabelCatalogue):
    instances = read_instances(train)
    rows = [row for row, labels in enumerate(instances.labels) if any(label in catalogue for label in labels)]
    return instances.subset(sorted(random.Random(0).sample(rows, min(count, len(rows)))), "selection")


def small_catalogue(catalogue: xmr.LabelCatalogue, instances, size: int) -> xmr.LabelCatalogue:
    """The labels the selection queries use plus random others, up to ``size`` (keeps 27k-label sets affordable)."""
    used = {label for labels in instances.labels for label in labels if label in catalogue}
    others = [label for label in catalogue.ids if label not in used]
    keep = used | set(random.Random(1).sample(others, max(0, min(len(others), size - len(used)))))
    return catalogue.take([row for row, label in enumerate(catalogue.ids) if label in keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--max-labels", type=int, default=3000, help="labels kept per data set (tibkat has 27k)")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.csv"
    rows = list(csv.DictReader(results.open())) if results.is_file() else []  # measured before: kept, not redone
    done = {(row["data"], row["config"]) for row in rows}
    for name in args.sets:
        labels_file, train_file = SETS[name]
        catalogue = xmr.LabelCatalogue.from_file(DATA / labels_file)
        instances = selection(DATA / train_file, args.queries, catalogue)
        if len(catalogue) > args.max_labels:
            catalogue = small_catalogue(catalogue, instances, args.max_labels)
        for config_name in (config for config in args.configs if (name, config) not in done):
            started = time.perf_counter()
            encoder = xmr.load_encoder({"type": "decoder-llm", "model": "smollm2-135m", "max_length": 128,
                                        **CONFIGS[config_name]})
            with tempfile.TemporaryDirectory() as scratch:  # built indexes stay out of eval/
                index = xmr.build_index(catalogue, encoder, Path(scratch) / "index", factory="Flat")
            result = evaluate(index, instances, ks=[1, 5, 10])
            metrics = result["metrics"]
            rows.append({"data": name, "labels": len(catalogue), "queries": len(instances), "config": config_name,
                         "P@1": round(100 * metrics["P@1"], 2), "P@5": round(100 * metrics["P@5"], 2),
                         "R@10": round(100 * metrics["R@10"], 2),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(rows[-1]), flush=True)
            with results.open("w", newline="") as handle:  # after every configuration: a long run keeps its rows
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    write_report(rows)


def write_report(rows: list[dict]) -> None:
    configs = list(dict.fromkeys(row["config"] for row in rows))
    sets = list(dict.fromkeys(row["data"] for row in rows))
    lines = ["# Bundled decoder (SmolLM2-135M) zero-shot, per template and pooling", "",
             "Selection queries sampled from each data set's TRAIN split (seed 0); P@1 / R@10 in %.", "",
             "| config | " + " | ".join(f"{name} P@1 | {name} R@10" for name in sets) + " | mean P@1 | mean R@10 |",
             "|---|" + "---|---|" * len(sets) + "---|---|"]
    best = {}
    for config in configs:
        cells, p1, r10 = [], [], []
        for name in sets:
            row = next((row for row in rows if row["config"] == config and row["data"] == name), None)
            if row is None:
                cells += ["–", "–"]
                continue
            cells += [f"{float(row['P@1']):.2f}", f"{float(row['R@10']):.2f}"]
            p1.append(float(row["P@1"]))
            r10.append(float(row["R@10"]))
        means = f"{sum(p1) / len(p1):.2f} | {sum(r10) / len(r10):.2f}" if len(p1) == len(sets) else "– | –"
        lines.append(f"| {config} | " + " | ".join(cells) + f" | {means} |")
        if len(p1) == len(sets):
            best[config] = (sum(r10) / len(r10), sum(p1) / len(p1))
    winner = max(best, key=best.get)
    resolved = next((name for name, config in CONFIGS.items() if config == BUNDLED_DECODER_ZERO_SHOT["smollm2-135m"]),
                    "none of these")
    verdict = "resolves to it" if resolved == winner else f"resolves to {resolved}: update it"
    lines += ["", f"Best by mean R@10 (then P@1) over the data sets: **{winner}**; the bare name "
              f"`smollm2-135m` {verdict} (`xmr/encoders/bundled.py`, `BUNDLED_DECODER_ZERO_SHOT`).",
              "Rerun: `python scripts/bench_decoder_configs.py` (rows already in results.csv are kept)."]
    (OUT / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
