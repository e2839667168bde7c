"""FusionSent evidence on Reuters-21578 ModApte (issue 15): few-shot and full-train, all on the full test split.

Few-shot (``--shots 8 16 32 --seeds 0 1 2``): for each k and sampling seed, ``xmr train fusionsent-reuters`` with
``fusionsent.shots=k`` (k articles per topic drawn from the training split minus the 300 held-out validation
articles, which tune the thresholds) trains both branches; the run's three predictors are scored on the full test
split: body 1 (SetFit branch) + head, body 2 (label branch) + head, fused + head. The peer is the ``setfit``
package itself (``setfit.Trainer``, ``SetFitModel`` with a one-vs-rest logistic head, its own pair sampler and
``predict`` at 0.5) on the same k-shot articles with the same pair-step budget. Zero-shot: the bundled MiniLM
indexing the topic names (its "set" is the top-1 topic, for the F1 columns). ``--full``: the bundled recipe on
the whole training split (``--full-steps`` / ``--full-max-length`` override its pair steps and text length), with
its train time.

Every run's numbers go to ``OUT/runs/*.json`` (a finished run is skipped when the script is started again), the
table of means and standard deviations over seeds to ``OUT/summary.json`` and ``OUT/report.md``.

    nice -n 10 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python scripts/eval_fusionsent.py \
        --shots 8 16 32 --seeds 0 1 2 --zero-shot --full --full-steps 40 --full-max-length 32

(jobs can be split over processes: each run is one file, and every process rewrites the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import xmr  # noqa: E402
import xmr.fusionsent  # noqa: E402,F401
from xmr import metrics as m  # noqa: E402
from xmr.catalogue import LabelCatalogue  # noqa: E402
from xmr.datasets import read_instances  # noqa: E402
from xmr.evaluation import evaluate  # noqa: E402
from xmr.fusionsent.pairs import few_shot_rows  # noqa: E402
from xmr.index import build_index_from_embeddings  # noqa: E402
from xmr.predictor import Predictor  # noqa: E402
from xmr.search import SearchResult  # noqa: E402
from xmr.train import load_recipe, train  # noqa: E402
from xmr.train.data import TrainingData  # noqa: E402

DATA = Path("../shared/data/reuters21578-modapte")
KS = (1, 3, 5)
METHODS = ("zero-shot MiniLM", "SetFit (setfit, one-vs-rest)", "body 1 (SetFit branch) + head",
           "body 2 (label branch) + head", "FusionSent: fused + head")
COLUMNS = ("micro_f1", "macro_f1", "example_f1", "P@1", "P@3", "PSP@1")


class SetFitPeer(Predictor):
    """The setfit package's model as an xmr predictor: ranking by ``predict_proba``, sets by ``predict``."""

    kind = "setfit-peer"

    def __init__(self, model: Any, catalogue: LabelCatalogue) -> None:
        self.model, self.catalogue = model, catalogue

    def predict(self, items: Any, k: int = 10, **options: Any) -> SearchResult:
        texts = list(items)
        probs = np.asarray(self.model.predict_proba(texts, as_numpy=True), dtype=np.float32)
        chosen = np.asarray(self.model.predict(texts, as_numpy=True))
        rows = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return SearchResult(rows, np.take_along_axis(probs, rows, axis=1), rows, self.catalogue,
                            score="probability", sets=[np.flatnonzero(row) for row in chosen])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": None, "encoder": None, "structure": "setfit one-vs-rest", "params": {}}


def scores(report: dict[str, Any]) -> dict[str, float]:
    values = {key: report["metrics"][key] for key in report["metrics"] if key.split("@")[0] in ("P", "PSP", "nDCG")}
    values.update(report["set_metrics"] or {})
    return values


def recipe_for(args: argparse.Namespace, name: str, shots: int | None, seed: int) -> Any:
    overrides = {"name": name, "output": args.runs, "fusionsent.shots": shots, "fusionsent.shots_seed": seed,
                 "fusionsent.branch_predictors": shots is not None}
    steps, length = (args.steps, args.max_length) if shots is not None else (args.full_steps, args.full_max_length)
    if steps is not None:
        overrides["schedule.max_steps"] = steps
    if length is not None:
        overrides.update({"encoder.max_seq_length": length, "fusionsent.train_max_length": length})
    return load_recipe("fusionsent-reuters", overrides)


def setfit_peer(recipe: Any, shots: int, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """setfit's own trainer on the same k-shot articles and pair-step budget, scored like the others."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from xmr.encoders.bundled import resolve_model_location
    from xmr.fusionsent.head import multi_hot

    spec = recipe.tasks["fusionsent"]
    data = TrainingData.load(spec.data, recipe.seed, say=lambda message: None)
    rows = few_shot_rows(data.pairs.positives, len(data.labels), shots, seed)
    targets = multi_hot([data.pairs.positives[row] for row in rows], len(data.labels))
    model = SetFitModel.from_pretrained(resolve_model_location("all-MiniLM-L6-v2"),
                                        multi_target_strategy="one-vs-rest")
    model.model_body.max_seq_length = args.max_length
    dataset = Dataset.from_dict({"text": [data.pairs.queries[row] for row in rows], "label": targets.tolist()})
    trainer_args = TrainingArguments(batch_size=spec.fusionsent.batch_size, max_steps=args.steps,
                                     sampling_strategy="oversampling", body_learning_rate=recipe.section(
                                         "optimizer").lr, seed=seed, report_to="none", save_strategy="no",
                                     output_dir=str(Path(args.runs) / "setfit-checkpoints"), show_progress_bar=False)
    started = time.perf_counter()
    Trainer(model=model, args=trainer_args, train_dataset=dataset).train()
    seconds = time.perf_counter() - started
    report = evaluate(SetFitPeer(model, data.labels), DATA / "test.jsonl", ks=KS, train=DATA / "train.jsonl")
    return {**scores(report), "train_seconds": round(seconds, 1)}


def zero_shot(args: argparse.Namespace) -> dict[str, float]:
    catalogue = LabelCatalogue.from_file(DATA / "labels.jsonl")
    encoder = xmr.load_encoder({"type": "sentence-transformers", "model": "all-MiniLM-L6-v2",
                                "max_seq_length": args.max_length})
    index = build_index_from_embeddings(catalogue, encoder.encode_labels(catalogue.items()), None, encoder=encoder)
    test = read_instances(DATA / "test.jsonl")
    report = evaluate(index, test, ks=KS, train=DATA / "train.jsonl")
    top = index.search(test.texts, k=1).rows  # the top topic as the predicted set
    truth = [np.array([catalogue.position(label) for label in labels]) for labels in test.labels]
    return {**scores(report), **m.set_metrics([row[row >= 0] for row in top], truth)}


def few_shot_run(args: argparse.Namespace, shots: int, seed: int) -> dict[str, Any]:
    recipe = recipe_for(args, f"fusionsent-k{shots}-s{seed}", shots, seed)
    summary = train(recipe, restart=True, say=print)
    task = summary
    result: dict[str, Any] = {"shots": shots, "seed": seed, "train_texts": task["train_texts"],
                              "train_seconds": task["train_seconds"], "steps": task["steps"], "methods": {}}
    for method, path in (("body 1 (SetFit branch) + head", task["branches"]["setfit"]),
                         ("body 2 (label branch) + head", task["branches"]["label"]),
                         ("FusionSent: fused + head", task["predictor"])):
        report = evaluate(xmr.load_predictor(path), DATA / "test.jsonl", ks=KS, train=DATA / "train.jsonl")
        result["methods"][method] = {**scores(report), "threshold": report["predictor"]["head"]}
    if args.setfit:
        result["methods"]["SetFit (setfit, one-vs-rest)"] = setfit_peer(recipe, shots, seed, args)
    return result


def full_run(args: argparse.Namespace) -> dict[str, Any]:
    recipe = recipe_for(args, "fusionsent-full", None, 0)
    summary = train(recipe, restart=True, say=print)
    report = evaluate(xmr.load_predictor(summary["predictor"]), DATA / "test.jsonl", ks=KS,
                      train=DATA / "train.jsonl")
    return {"train_texts": summary["train_texts"], "steps": summary["steps"],
            "train_seconds": summary["train_seconds"], "head_seconds": summary["head_seconds"],
            "torch_threads": torch.get_num_threads(), "recipe": recipe.to_dict(),
            "methods": {"FusionSent: fused + head": scores(report)}}


def aggregate(out: Path) -> None:
    """Means and standard deviations over seeds per (k, method), as JSON and a Markdown table."""
    runs = [json.loads(path.read_text()) for path in sorted((out / "runs").glob("*.json"))]
    zero = next((run for run in runs if run.get("kind") == "zero-shot"), None)
    table: dict[str, Any] = {}
    for run in runs:
        if run.get("kind") != "few-shot":
            continue
        for method, values in run["methods"].items():
            cell = table.setdefault(str(run["shots"]), {}).setdefault(method, {"seeds": []})
            cell["seeds"].append(run["seed"])
            for column in COLUMNS:
                cell.setdefault(column, []).append(values[column])
    for methods in table.values():
        for cell in methods.values():
            for column in COLUMNS:
                values = cell.pop(column)
                cell[column] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    full = next((run for run in runs if run.get("kind") == "full"), None)
    (out / "summary.json").write_text(json.dumps({"few_shot": table, "zero_shot": zero, "full": full}, indent=2)
                                      + "\n")
    lines = ["# FusionSent on Reuters-21578 ModApte (full test split, 3,019 articles)", "",
             "Produced by `scripts/eval_fusionsent.py`; numbers in % (mean ± std over sampling seeds).", "",
             "| k | method | seeds | micro-F1 | macro-F1 | example-F1 | P@1 | P@3 | PSP@1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    if zero:
        values = zero["methods"]["zero-shot MiniLM"]
        lines.append("| 0 | zero-shot MiniLM (set = top-1) | - | " + " | ".join(
            f"{100 * values[column]:.1f}" for column in COLUMNS) + " |")
    for shots in sorted(table, key=int):
        for method in METHODS:
            if method in table[shots]:
                cell = table[shots][method]
                lines.append(f"| {shots} | {method} | {len(cell['seeds'])} | " + " | ".join(
                    f"{100 * cell[column]['mean']:.1f} ± {100 * cell[column]['std']:.1f}" for column in COLUMNS)
                    + " |")
    if full:
        values = full["methods"]["FusionSent: fused + head"]
        lines.append(f"| all ({full['train_texts']}) | FusionSent: fused + head | 1 | " + " | ".join(
            f"{100 * values[column]:.1f}" for column in COLUMNS) + " |")
    few = [run for run in runs if run.get("kind") == "few-shot"]
    if few:
        lines += ["", "Budgets per few-shot run: each branch {} pair steps of 16 pairs (oversampled text pairs; "
                  "per article its topics and as many sampled non-topics), texts cut to {} tokens for training and "
                  "encoding, AdamW lr 2e-5; the head's C from {{1, 10, 100, 1000}} and its global threshold chosen "
                  "on 300 training articles held out before the k-shot draw (never trained on). The setfit peer: "
                  "the same k-shot articles, "
                  "`setfit.Trainer` with the same steps and batch size, its default one-vs-rest LogisticRegression "
                  "head, sets from `predict` (0.5). Articles per run: {}; train seconds (both branches): {}.".format(
                      few[0]["steps_budget"], few[0]["max_length"],
                      ", ".join(f"k{run['shots']}-s{run['seed']} {run['train_texts']}" for run in few),
                      ", ".join(f"k{run['shots']}-s{run['seed']} {run['train_seconds']:.0f}" for run in few))]
    if full:
        lines += ["", f"Full train split: {full['steps']} pair steps of 16 pairs per branch, texts cut to "
                  f"{full['recipe']['encoder']['max_seq_length']} tokens, in {full['train_seconds']:.0f} s; fusion "
                  f"and head (encoding {full['train_texts']} + 300 articles, 4 x 90 logistic regressions, "
                  f"thresholds) {full['head_seconds']:.0f} s; {full['torch_threads']} torch thread on 2 shared cores."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, nargs="*", default=[])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40, help="pair steps per branch in few-shot runs")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per text in few-shot runs")
    parser.add_argument("--full-steps", type=int, help="pair steps per branch of --full (default: the recipe's)")
    parser.add_argument("--full-max-length", type=int, help="tokens per text in --full (default: the recipe's)")
    parser.add_argument("--no-setfit", dest="setfit", action="store_false", help="skip the setfit peer")
    parser.add_argument("--zero-shot", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--runs", default="/tmp/fusionsent-runs", help="training run folders (not committed)")
    parser.add_argument("--out", default="eval/results/fusionsent-reuters")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Any]] = []
    if args.zero_shot:
        jobs.append(("zero-shot", lambda: {"methods": {"zero-shot MiniLM": zero_shot(args)}}))
    for seed in args.seeds:
        for shots in args.shots:
            jobs.append((f"few-shot-k{shots}-s{seed}", lambda shots=shots, seed=seed: few_shot_run(args, shots, seed)))
    if args.full:
        jobs.append(("full", lambda: full_run(args)))
    for name, job in jobs:
        path = out / "runs" / f"{name}.json"
        if path.exists():
            print(f"{name}: done before, skipped")
            continue
        started = time.perf_counter()
        few = name.startswith("few-shot")
        result = {"kind": "few-shot" if few else name, **job(),
                  **({"steps_budget": args.steps, "max_length": args.max_length} if few else {})}
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"{name}: {result['wall_seconds']:.0f} s", flush=True)
        aggregate(out)
    aggregate(out)


if __name__ == "__main__":
    main()
