"""Quality evidence for UWE (issue 14): pooled-only vs late-interaction re-rank, zero-shot vs trained, every direction.

    .venv/bin/python scripts/eval_uwe.py esco     # after `xmr train uwe-esco`:    eval/results/uwe-esco-*/, .md
    .venv/bin/python scripts/eval_uwe.py reuters  # after `xmr train uwe-reuters`: eval/results/uwe-reuters-*/, .md
    .venv/bin/python scripts/eval_uwe.py sweep    # zero-shot T sweep on the validation split: uwe-esco-sweep.md

ESCO (``../shared/data/esco-skill-extraction``, test split, per subset and overall, RP@5/RP@10/MRR@10/MAP@10):
sentence -> skill with the trained run's index (``runs/uwe-esco/index``) and with the untrained MiniLM in the same
late-interaction encoder (its pooled vectors are exactly the zero-shot dense MiniLM); the reverse direction, skill ->
the test sentences that mention it (the sentences are the target space, built here; they are never trained on); and
job title -> occupation on the occupations held out of training (``runs/uwe-esco/targets/title-occupation``). The
fine-tuned dual encoder's numbers are read from ``eval/results/esco-minilm-finetuned`` (committed earlier).
The sweep scores the untrained MiniLM on the 136 validation sentences with raw and unit token vectors at several
temperatures and K (how the recipes' ``temperature`` and ``normalize_tokens`` were chosen; test is not read).
Reuters: P@1/P@5/PSP@1 of ``runs/uwe-reuters/index`` pooled vs re-ranked, beside ``reuters-minilm-finetuned``.
Each run folder is what ``xmr eval --out`` writes; queries are encoded once and scored with ``rerank=0`` (FAISS
over the pooled vectors only) and with the index's own re-rank depth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import xmr
from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances, read_instances
from xmr.evaluation import evaluate
from xmr.report import write_run
from xmr.representations import TokenVectors
from xmr.uwe import build_uwe_index

ESCO = Path("../shared/data/esco-skill-extraction")
REUTERS = Path("../shared/data/reuters21578-modapte")
RESULTS = Path("eval/results")
ESCO_METRICS = ("RP@5", "RP@10", "MRR@10", "MAP@10")
ANCHORS = {"house": "36.8 dense; CurriculumMatch 59.61",
           "tech": "49.8 dense; ConTeXT-match 73.99, CurriculumMatch 69.93", "techwolf": "42.1 dense"}


def both_ways(index: xmr.LabelIndex, dataset: Instances, name: str, ks: list[int], **options: Any) -> dict[str, dict]:
    """Evaluate pooled-only and re-ranked on the same encoded queries; write both run folders."""
    queries = index.encoder.encode(dataset.items(), "query")
    depth = index.rerankers[0].depth
    results = {}
    for variant, rerank in (("pooled", 0), ("rerank", depth)):
        result = evaluate(index, dataset, ks=ks, query_vectors=queries, rerank=rerank, **options)
        write_run(result, RESULTS / f"{name}-{variant}")
        results[variant] = result
        print(f"{name}-{variant}: " + ", ".join(f"{key} {100 * value:.2f}" for key, value in result["metrics"].items()
                                                if key.split("@")[0] in ("P", "RP", "MRR", "MAP", "PSP")), flush=True)
    return results


def reverse_task(test: Instances) -> tuple[LabelCatalogue, Instances]:
    """Skill -> the test sentences that mention it: the sentences become the catalogue, each skill a query."""
    labels = LabelCatalogue.from_file(ESCO / "labels.jsonl")
    sentences = LabelCatalogue.from_records([{"id": str(query), "text": text} for query, text
                                             in zip(test.ids, test.texts, strict=True)], source="ESCO test sentences")
    mentions: dict[int, list[str]] = {}
    for query, label_ids in zip(test.ids, test.labels, strict=True):
        for label in label_ids:
            mentions.setdefault(label, []).append(str(query))
    skills = sorted(mentions)
    queries = Instances(skills, [labels.texts[labels.position(skill)] for skill in skills],
                        [mentions[skill] for skill in skills], [], "ESCO test skills -> sentences")
    return sentences, queries


def table(rows: dict[str, dict], groups: list[str], metrics: tuple[str, ...]) -> str:
    head = "| model | " + " | ".join(f"{group} {metric}" for group in groups for metric in metrics) + " |"
    lines = [head, "|---|" + "---|" * (len(groups) * len(metrics))]
    for name, result in rows.items():
        cells = []
        for group in groups:
            values = result["metrics"] if group == "all" else result["groups"][group]["metrics"]
            cells += [f"{100 * values[metric]:.2f}" for metric in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def esco(run: Path, zero_shot: dict[str, Any]) -> None:
    test = read_instances(ESCO / "test.jsonl")
    groups = ["house", "tech", "techwolf", "all"]
    trained = xmr.load_index(run / "index")
    untrained = build_uwe_index(ESCO / "labels.jsonl", zero_shot, None, rerank=trained.rerankers[0].depth)
    forward = {"zero-shot": both_ways(untrained, test, "uwe-esco-zeroshot", [1, 3, 5, 10], group_by="subset"),
               "trained": both_ways(trained, test, "uwe-esco", [1, 3, 5, 10], group_by="subset")}
    sentences, skills = reverse_task(test)
    reverse = {}
    for name, encoder in (("zero-shot", untrained.encoder), ("trained", trained.encoder)):
        index = build_uwe_index(sentences, encoder, None, rerank=trained.rerankers[0].depth)
        reverse[name] = both_ways(index, skills, f"uwe-esco{'-zeroshot' if name == 'zero-shot' else ''}-reverse",
                                  [1, 3, 5, 10])
    titles = read_instances(run.parent / "data" / "uwe-esco" / "titles-heldout.jsonl")
    occupations = xmr.load_index(run / "targets" / "title-occupation")
    jobs = {"zero-shot": both_ways(build_uwe_index(occupations.catalogue, untrained.encoder, None,
                                                   rerank=occupations.rerankers[0].depth),
                                   titles, "uwe-esco-zeroshot-titles", [1, 3, 5, 10]),
            "trained": both_ways(occupations, titles, "uwe-esco-titles", [1, 3, 5, 10])}
    finetuned = json.loads((RESULTS / "esco-minilm-finetuned" / "metrics.json").read_text())
    dense = json.loads((RESULTS / "esco-minilm-zeroshot" / "metrics.json").read_text())
    rows = {"MiniLM zero-shot, dense (eval/results/esco-minilm-zeroshot)": dense,
            "MiniLM zero-shot, UWE pooled (= dense)": forward["zero-shot"]["pooled"],
            "MiniLM zero-shot, UWE late-interaction re-rank": forward["zero-shot"]["rerank"],
            "fine-tuned dual encoder (eval/results/esco-minilm-finetuned)": finetuned,
            "UWE trained, pooled only": forward["trained"]["pooled"],
            "UWE trained, late-interaction re-rank": forward["trained"]["rerank"]}
    depth = trained.rerankers[0].depth
    report = [f"# UWE on ESCO skill extraction (test, {len(test)} sentences; re-rank K = {depth})", "",
              "Made by `scripts/eval_uwe.py esco` after `xmr train uwe-esco`; values in percent; MRR and MAP at 10.",
              "", "## Sentence -> skill", "", table(rows, groups, ESCO_METRICS), "",
              "Anchors (RP@10): " + "; ".join(f"{group}: {text}" for group, text in ANCHORS.items()), "",
              f"## Skill -> the test sentences that mention it ({len(skills)} skills, {len(sentences)} sentences)", "",
              table({f"{name}, {variant}": result for name, pair in reverse.items()
                     for variant, result in pair.items()}, ["all"], ("P@1", "RP@5", "RP@10", "MRR@10", "MAP@10")),
              "", f"## Alternative job titles -> occupation ({len(titles)} held-out occupations, "
              f"{len(occupations.catalogue)} occupations)", "",
              table({f"{name}, {variant}": result for name, pair in jobs.items() for variant, result in pair.items()},
                    ["all"], ("P@1", "RP@5", "RP@10", "MRR@10", "MAP@10")), ""]
    (RESULTS / "uwe-esco.md").write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))


def reuters(run: Path) -> None:
    index = xmr.load_index(run / "index")
    results = both_ways(index, read_instances(REUTERS / "test.jsonl"), "uwe-reuters", [1, 3, 5],
                        train=REUTERS / "train.jsonl")
    finetuned = json.loads((RESULTS / "reuters-minilm-finetuned" / "metrics.json").read_text())
    rows = {"fine-tuned dual encoder (eval/results/reuters-minilm-finetuned)": finetuned,
            "UWE trained, pooled only": results["pooled"], "UWE trained, late-interaction re-rank": results["rerank"]}
    report = [f"# UWE on Reuters-21578 ModApte (test, re-rank K = {index.rerankers[0].depth})", "",
              "Made by `scripts/eval_uwe.py reuters` after `xmr train uwe-reuters`; values in percent.", "",
              table(rows, ["all"], ("P@1", "P@5", "PSP@1", "PSP@5", "nDCG@5")), ""]
    (RESULTS / "uwe-reuters.md").write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))


def sweep() -> None:
    validation = read_instances(ESCO / "validation.jsonl")
    encoder = xmr.load_encoder({"type": "uwe-late-interaction", "model": "all-MiniLM-L6-v2", "max_seq_length": 64})
    labels = encoder.encode(LabelCatalogue.from_file(ESCO / "labels.jsonl").items(), "label")
    queries = encoder.encode(validation.items(), "query")
    index = build_uwe_index(ESCO / "labels.jsonl", encoder, None, labels=labels)
    stage, raw = index.rerankers[0], index.rerankers[0].tokens

    def unit(tokens: TokenVectors) -> TokenVectors:
        values = tokens.values.astype(np.float32)
        values /= np.linalg.norm(values, axis=1, keepdims=True)
        return TokenVectors(values, tokens.offsets, tokens.pooled, True)

    pooled = evaluate(index, validation, ks=[5, 10], query_vectors=queries, rerank=0)["metrics"]
    lines = ["# Zero-shot late-interaction temperature sweep (ESCO validation, 136 sentences, MiniLM untrained)", "",
             "Made by `scripts/eval_uwe.py sweep`; values in percent.", "",
             "| tokens | T | K | RP@5 | RP@10 | MRR@10 |", "|---|---|---|---|---|---|",
             f"| pooled only | - | - | {100 * pooled['RP@5']:.2f} | {100 * pooled['RP@10']:.2f} | "
             f"{100 * pooled['MRR@10']:.2f} |"]
    for normalized, temperatures in ((False, (1.0, 3.0, 10.0, 30.0)), (True, (0.03, 0.1, 0.3, 1.0))):
        stage.tokens = unit(labels).values if normalized else raw
        for temperature in temperatures:
            stage.temperature = temperature
            for depth in (50, 100):
                found = evaluate(index, validation, ks=[5, 10], query_vectors=unit(queries) if normalized else queries,
                                 rerank=depth)["metrics"]
                lines.append(f"| {'unit' if normalized else 'raw'} | {temperature} | {depth} | "
                             f"{100 * found['RP@5']:.2f} | {100 * found['RP@10']:.2f} | {100 * found['MRR@10']:.2f} |")
    (RESULTS / "uwe-esco-sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["esco", "reuters", "sweep"])
    parser.add_argument("--run", help="the training run folder (default runs/uwe-TASK)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run or f"runs/uwe-{args.task}")
    if args.task == "sweep":
        sweep()
    elif args.task == "esco":
        recipe = json.loads((run / "recipe.json").read_text())
        esco(run, recipe["encoder"])  # the untrained model: the recipe's encoder before training
    else:
        reuters(run)


if __name__ == "__main__":
    main()
