"""Evidence for PromptHash (issue 16), one command per part; results under eval/results/prompthash-*/ and
eval/bench/prompthash-pypi/.

    .venv/bin/python scripts/eval_prompthash.py --part coco      # trains prompthash-coco-mini unless its run exists
    .venv/bin/python scripts/eval_prompthash.py --part reuters   # needs runs/hash-reuters (xmr train hash-reuters)
    .venv/bin/python scripts/eval_prompthash.py --part esco      # needs runs/hash-esco (xmr train hash-esco)
    .venv/bin/python scripts/eval_prompthash.py --part pypi      # codes of the first --n PyPI summaries
    .venv/bin/python scripts/eval_prompthash.py --part esco-ablation   # validation curves of runs/hash-esco*
    .venv/bin/python scripts/eval_prompthash.py --part esco-bits       # PCA-ITQ / LSH at 64, 128, 256 bits

coco: I->T and T->I mAP (whole ranking and @10) and precision within Hamming radius 2 on the 79 test images and
their first captions, at 16/32/64 bits, before training (the run's initial weights), after training, random codes,
and float retrieval with the same towers (cosine of the tower vectors, initial and trained); plus the run's index
(the 80 category names as 64-bit codes) scored by ``xmr.evaluation.evaluate`` with and without float re-rank.
reuters / esco: P@k, RP@10 of Hamming search with and without float re-rank, the untrained hash head, PCA-ITQ
(faiss ITQTransform) and sign random projection baselines, and the float MiniLM index; bytes per label and QPS (all
test queries in one batch, best of 3). pypi: recall@10 against exact float search and QPS of a hash head's codes
(Hamming, + float re-rank, multi-index hashing), of PCA-ITQ and sign random projections (LSH) and of the float
recipes, on the MiniLM vectors ``scripts/bench_index.py`` caches (as many 50k-row chunks as are there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from xmr.catalogue import LabelCatalogue  # noqa: E402
from xmr.datasets import read_instances  # noqa: E402
from xmr.encoders import load_encoder  # noqa: E402
from xmr.evaluation import evaluate  # noqa: E402
from xmr.index import build_index_from_embeddings, load_index  # noqa: E402
from xmr.index.recipes import IndexRecipe  # noqa: E402
from xmr.metrics import mean_average_precision  # noqa: E402
from xmr.prompthash.codes import HashCodes  # noqa: E402
from xmr.prompthash.encoder import item_parts  # noqa: E402
from xmr.prompthash.itq import fit_itq, itq_codes  # noqa: E402
from xmr.prompthash.metrics import hamming_map, multi_hot, precision_within_radius, relevance  # noqa: E402
from xmr.representations import BinaryCodes  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "eval" / "results"
FIT_ROWS = 50_000  # pypi: label vectors PCA-ITQ is fitted on
BENCH = ROOT / "eval" / "bench"


def write(folder: Path, metrics: dict, report: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "report.md").write_text(report)
    print(report)


def float_map(queries: np.ndarray, database: np.ndarray, query_labels: np.ndarray, database_labels: np.ndarray,
              k: int | None = None) -> float:
    """mAP of cosine ranking (same relevance and AP as :func:`hamming_map`)."""
    depth = k or len(database)
    order = np.argsort(-(queries @ database.T), axis=1, kind="stable")[:, :depth]
    relevant = [np.flatnonzero(row) for row in relevance(query_labels, database_labels)]
    return mean_average_precision(order, relevant, depth)


def best_of(runs: int, call) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


# ---- COCO-mini ---------------------------------------------------------------------------------------------------
def part_coco(args: argparse.Namespace) -> None:
    from xmr.train import train
    from xmr.train.recipe import load_recipe

    run = ROOT / "runs" / "prompthash-coco-mini"
    if not (run / "summary.json").is_file():
        os.chdir(ROOT)
        train(load_recipe("prompthash-coco-mini"), restart=run.exists())
    labels = LabelCatalogue.from_file(DATA / "coco-mini" / "labels.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    trained = load_encoder(summary["encoder"])
    initial = load_encoder({**trained.config(), "model": None})
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    results: dict = {"train_seconds": summary["train_seconds"], "encoder": Path(summary["encoder"]).name,
                     "selection_metric": json.loads((run / "recipe.json").read_text())["evaluation"]["metric"],
                     "best_step": (summary.get("best") or {}).get("step"), "steps": summary["steps"],
                     "validation": [{"step": entry["step"], **{key: value for key, value in entry["validation"].items()
                                                               if key.startswith("mAP")}}
                                    for entry in log if "validation" in entry]}
    rng = np.random.default_rng(0)
    for split in ("test", "train"):
        data = read_instances(str(DATA / "coco-mini" / f"{split}.jsonl"))
        rows = multi_hot([[labels.position(label) for label in item] for item in data.labels], len(labels))
        images = [{"images": list(images)} for images in data.images]
        results[split] = {"items": len(images), "bits": {}}
        for bits in trained.net.config.bits:
            entry = {}
            for name, encoder in (("before training", initial), ("after training", trained)):
                coder = encoder.with_bits(bits)
                image_codes, text_codes = coder.encode(images, "query"), coder.encode(data.texts, "label")
                entry[name] = cross_modal(image_codes, text_codes, rows)
                if bits == trained.net.config.bits[-1]:
                    results[split][f"float, towers {name}"] = {
                        "I->T mAP": float_map(image_codes.floats, text_codes.floats, rows, rows),
                        "T->I mAP": float_map(text_codes.floats, image_codes.floats, rows, rows),
                        "I->T mAP@10": float_map(image_codes.floats, text_codes.floats, rows, rows, 10),
                        "T->I mAP@10": float_map(text_codes.floats, image_codes.floats, rows, rows, 10)}
            random_image = BinaryCodes.from_signs(rng.normal(size=(len(images), bits)))
            random_text = BinaryCodes.from_signs(rng.normal(size=(len(images), bits)))
            entry["random codes"] = cross_modal(random_image, random_text, rows)
            results[split]["bits"][bits] = entry
    test = read_instances(str(DATA / "coco-mini" / "test.jsonl"))
    index = load_index(run / "index")
    results["category index (64 bits, 80 names)"] = {
        f"{modality}, {mode}": {key: value for key, value in evaluate(index, test, ks=[1, 3, 5], modality=modality,
                                                                        **knobs)["metrics"].items()
                                if key in ("P@1", "P@3", "P@5")}
        for modality in ("image", "text", "all")
        for mode, knobs in (("hamming", {"rerank": 0}), ("+ float re-rank", {}))}
    lines = ["# PromptHash on COCO-mini (tiny random open_clip towers: mechanism, not a benchmark)", "",
             "Relevance = sharing a COCO category; each image's caption is its first one. Training: `xmr train "
             f"prompthash-coco-mini` ({results['train_seconds']} s of training here) on 64 of the 80 train "
             f"images; the {results['encoder']} weights: step {results['best_step']} of {results['steps']}, the "
             f"validation step with the highest `{results['selection_metric']}` (mean of I->T and T->I Hamming mAP "
             "among the 16 held-out images and their captions). Validation mAP by step: " + ", ".join(
                 f"{v['step']}: {100 * v['mAP']:.1f}" for v in results["validation"] if "mAP" in v) + ".", ""]
    columns = ("I->T mAP", "T->I mAP", "I->T mAP@10", "T->I mAP@10", "I->T P(H<=2)", "T->I P(H<=2)")
    for split, title in (("test", "79 test images (never seen)"),
                         ("train", "the 80 train images (64 trained on, 16 held out for selection)")):
        lines += [f"## {title}", "", "| bits | codes | " + " | ".join(columns) + " |", "|---|---|" + "---|" * 6]
        for bits, entry in results[split]["bits"].items():
            for name, values in entry.items():
                lines.append(f"| {bits} | {name} | " + " | ".join(f"{100 * values[key]:.2f}" for key in columns)
                             + " |")
        lines += ["", "| float retrieval (cosine of the tower vectors) | " + " | ".join(columns[:4]) + " |",
                  "|---|---|---|---|---|"]
        for name in ("float, towers before training", "float, towers after training"):
            values = results[split][name]
            lines.append(f"| {name} | " + " | ".join(f"{100 * values[key]:.2f}" for key in columns[:4]) + " |")
        lines.append("")
    lines += ["Category retrieval through the run's index (`xmr eval runs/prompthash-coco-mini/index --test "
              "../shared/data/coco-mini/test.jsonl --modality M`):", "", "| query | P@1 | P@3 | P@5 |",
              "|---|---|---|---|"]
    for name, values in results["category index (64 bits, 80 names)"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * values[k]:.2f}" for k in ("P@1", "P@3", "P@5")) + " |")
    write(RESULTS / "prompthash-coco-mini", results, "\n".join(lines) + "\n")


def cross_modal(image: BinaryCodes, text: BinaryCodes, rows: np.ndarray) -> dict[str, float]:
    out = {}
    for name, queries, database in (("I->T", image, text), ("T->I", text, image)):
        out[f"{name} mAP"] = hamming_map(queries=queries, database=database, query_labels=rows, database_labels=rows)
        out[f"{name} mAP@10"] = hamming_map(queries=queries, database=database, query_labels=rows,
                                            database_labels=rows, k=10)
        out[f"{name} P(H<=2)"] = precision_within_radius(queries=queries, database=database, query_labels=rows,
                                                         database_labels=rows)["precision"]
    return out


# ---- text-only: Reuters and ESCO ------------------------------------------------------------------------------------
TEXT_PARTS = {
    "reuters": ("hash-reuters", DATA / "reuters21578-modapte", [1, 3, 5, 10], ["P@1", "P@3", "P@5", "RP@10"], None),
    "esco": ("hash-esco", DATA / "esco-skill-extraction", [1, 5, 10], ["P@1", "RP@5", "RP@10"], "subset"),
}


def linear_hashes(fit_floats: np.ndarray, label_floats: np.ndarray, query_floats: np.ndarray,
                  bits: int) -> dict[str, tuple[HashCodes, HashCodes]]:
    """The baselines a learned head has to beat, as (label codes, query codes) carrying their floats: PCA-ITQ fitted
    on ``fit_floats`` (unsupervised: no labels, no pairs) through FAISS's ITQTransform, checked against
    ``faiss.index_factory(d, "ITQ{bits},LSH")``, and sign random projection (Charikar 2002; FAISS ``IndexLSH`` with a
    random rotation)."""
    import faiss

    weight, bias = fit_itq(fit_floats, bits)
    reference = faiss.index_factory(fit_floats.shape[1], f"ITQ{bits},LSH")
    reference.train(np.ascontiguousarray(fit_floats, dtype=np.float32))
    faiss_bits = np.unpackbits(reference.sa_encode(np.ascontiguousarray(label_floats)), axis=1, bitorder="little")
    ours = np.unpackbits(itq_codes(label_floats, weight, bias).codes, axis=1)
    differ = faiss_bits != ours  # float rounding may flip a bit whose projection is ~0, nothing else
    rows = np.flatnonzero(differ.any(axis=1))
    projections = np.asarray(label_floats[rows], dtype=np.float32) @ weight.T + bias  # only the rows that differ
    if np.abs(projections[differ[rows]]).max(initial=0.0) > 1e-5:
        raise SystemExit(f"PCA-ITQ codes differ from faiss ITQ{bits},LSH on {differ.sum()} bits, some far from 0")
    print(f"PCA-ITQ vs faiss ITQ{bits},LSH: {differ.sum()} of {differ.size} bits differ, all with |projection| "
          "<= 1e-5", flush=True)
    rotation = np.random.default_rng(0).normal(size=(label_floats.shape[1], bits)).astype(np.float32)
    out = {}
    for name, hash_of in (("PCA-ITQ", lambda x: itq_codes(x, weight, bias)),
                          ("sign random projection (LSH)", lambda x: BinaryCodes.from_signs(x @ rotation))):
        out[name] = (HashCodes(hash_of(label_floats).codes, bits, label_floats),
                     HashCodes(hash_of(query_floats).codes, bits, query_floats))
    return out


def part_text(name: str) -> None:
    from xmr.train.data import TrainingData
    from xmr.train.recipe import load_recipe

    run_name, data, ks, shown, group = TEXT_PARTS[name]
    run = ROOT / "runs" / run_name
    encoder = load_encoder(run / "prompthash" / "best")
    labels = LabelCatalogue.from_file(data / "labels.jsonl")
    test = read_instances(str(data / "test.jsonl"))
    towers = encoder.towers
    recipe = json.loads((run / "recipe.json").read_text())
    os.chdir(ROOT)  # the recipe's data paths are relative to the repository root
    spec = load_recipe(run_name).tasks["prompthash"]
    training = TrainingData.load(spec.data, recipe["seed"], say=lambda line: None)
    train_floats = towers.encode([item_parts(item)[1] for item in training.pairs.queries], "query")
    query_floats = torch.from_numpy(towers.encode(test.texts, "query"))
    label_floats = towers.encode(labels.texts, "label")
    queries = encoder.from_features(list(query_floats), [None] * len(query_floats))
    index = load_index(run / "index")
    depth = index.rerankers[0].depth if index.rerankers else 0
    float_index = build_index_from_embeddings(labels, label_floats, None, encoder=towers.encoder)
    initial = load_encoder({**encoder.config(), "model": None})
    initial_index = build_index_from_embeddings(
        labels, initial.from_features([None] * len(labels), list(torch.from_numpy(label_floats))), None,
        encoder=initial, recipe=IndexRecipe("untrained", "BFlat"))
    initial_queries = initial.from_features(list(query_floats), [None] * len(query_floats))
    baselines = linear_hashes(np.concatenate([label_floats, train_floats]), label_floats, query_floats.numpy(),
                              encoder.bits)
    depths = [depth, 4 * depth]
    systems = [(f"{encoder.bits}-bit Hamming, random-init head (reference init, untrained)", initial_index,
                initial_queries, {})]
    for baseline, (label_codes, query_codes) in baselines.items():
        built = build_index_from_embeddings(labels, label_codes, None,
                                            recipe=IndexRecipe("baseline", "BFlat", rerank=max(depths)))
        systems.append((f"{encoder.bits}-bit {baseline}, Hamming", built, query_codes, {"rerank": 0}))
        systems += [(f"{encoder.bits}-bit {baseline} + float re-rank of top {d}", built, query_codes, {"rerank": d})
                    for d in depths]
    best_step = (json.loads((run / "summary.json").read_text()).get("best") or {}).get("step")
    head = "trained PromptHash head" if best_step else "PromptHash head as the run kept it (step 0: its init)"
    systems.append((f"{encoder.bits}-bit {head}, Hamming", index, queries, {"rerank": 0}))
    systems += [(f"{encoder.bits}-bit {head} + float re-rank of top {d}", index, queries, {"rerank": d})
                for d in depths]
    systems.append(("float MiniLM (Flat, inner product)", float_index, query_floats.numpy(), {}))
    rows = {}
    for label, predictor, vectors, knobs in systems:
        report = evaluate(predictor, test, ks=ks, query_vectors=vectors, group_by=group, **knobs)
        seconds = best_of(3, lambda p=predictor, v=vectors, kn=knobs: p.search_embeddings(v, k=max(ks), **kn))
        entry = {key: report["metrics"][key] for key in shown}
        entry["qps"] = len(test) / seconds
        if group:
            entry["groups"] = {g: {key: values["metrics"][key] for key in shown if key in values["metrics"]}
                               for g, values in report.get("groups", {}).items()}
        rows[label] = entry
        print(label, {key: round(100 * entry[key], 2) for key in shown}, flush=True)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    metric = recipe["evaluation"]["metric"]
    validation = [{"step": entry["step"], metric: entry["validation"][metric]}
                  for entry in log if "validation" in entry]
    summary = json.loads((run / "summary.json").read_text())
    code_bytes, float_bytes = encoder.bits // 8, towers.features * 4
    results = {"test_queries": len(test), "labels": len(labels), "bytes_per_label_codes": code_bytes,
               "bytes_per_label_floats": float_bytes, "bytes_per_label_codes_plus_rerank_floats":
               code_bytes + float_bytes, "recipe": recipe.get("prompthash", recipe), "validation": validation,
               "best_step": summary["best"]["step"] if summary.get("best") else None,
               "train_seconds": summary.get("train_seconds"), "runs": rows}
    lines = [f"# Text-only PromptHash hashing on {name} (hash head on the frozen bundled MiniLM)", "",
             f"{len(test)} test queries, {len(labels)} labels. Hash codes: {code_bytes} bytes per label "
             f"(+ 8-byte id in FAISS) vs {float_bytes} bytes of float32 ({float_bytes // code_bytes}x); the float "
             "re-rank reads the stored float vectors (memory-mapped) for the candidates only. PCA-ITQ is fitted "
             f"(no labels) on the {len(label_floats):,} label vectors and the {len(train_floats):,} training "
             "queries' vectors, the same vectors `prompthash.init: itq` fits its heads on; its codes equal "
             f"`faiss.index_factory(384, \"ITQ{encoder.bits},LSH\")` bit for bit "
             "up to float rounding (checked: a bit may differ only where its projection is within 1e-5 of 0).", "",
             "| search | " + " | ".join(shown) + " | QPS |", "|---|" + "---|" * (len(shown) + 1)]
    for label, entry in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * entry[key]:.2f}" for key in shown)
                     + f" | {entry['qps']:.0f} |")
    if group:
        lines += ["", "Per subset (RP@10):", ""]
        for label, entry in rows.items():
            lines.append(f"- {label}: " + ", ".join(f"{g} {100 * v.get('RP@10', float('nan')):.2f}"
                                                  for g, v in entry["groups"].items()))
    lines += ["", f"Validation during `xmr train {run_name}` (Hamming only, {metric}; best step "
              f"{results['best_step']}, kept): " + ", ".join(f"step {v['step']} {100 * v[metric]:.2f}"
                                                             for v in validation), "",
              f"Training: `xmr train {run_name}` (runs/{run_name}, {summary.get('train_seconds')} s); QPS: all test "
              "queries in one batch, best of 3, precomputed query vectors/codes, 2 shared CPU cores (loaded by other "
              "jobs)."]
    write(RESULTS / f"prompthash-{name}", results, "\n".join(lines) + "\n")


def part_code_length(name: str) -> None:
    """How many bits the data-independent baselines need: PCA-ITQ and LSH codes of the frozen MiniLM vectors at
    64/128/256 bits, Hamming only and with float re-rank (no training: what code length alone buys)."""
    from xmr.prompthash.towers import TextTowers
    from xmr.train.data import TrainingData
    from xmr.train.recipe import load_recipe

    run_name, data, ks, shown, group = TEXT_PARTS[name]
    os.chdir(ROOT)
    spec = load_recipe(run_name).tasks["prompthash"]
    towers = TextTowers(spec.prompthash.towers["model"])
    labels = LabelCatalogue.from_file(data / "labels.jsonl")
    test = read_instances(str(data / "test.jsonl"))
    training = TrainingData.load(spec.data, 0, say=lambda line: None)
    train_floats = towers.encode([item_parts(item)[1] for item in training.pairs.queries], "query")
    label_floats, query_floats = towers.encode(labels.texts, "label"), towers.encode(test.texts, "query")
    rows = {}
    for bits in (64, 128, 256):
        for baseline, (label_codes, query_codes) in linear_hashes(np.concatenate([label_floats, train_floats]),
                                                                  label_floats, query_floats, bits).items():
            built = build_index_from_embeddings(labels, label_codes, None,
                                                recipe=IndexRecipe("baseline", "BFlat", rerank=200))
            for depth in (0, 50, 200):
                report = evaluate(built, test, ks=ks, query_vectors=query_codes, rerank=depth)
                rows[f"{bits}-bit {baseline}" + (f" + float re-rank of top {depth}" if depth else ", Hamming")] = {
                    key: report["metrics"][key] for key in shown}
                print(list(rows)[-1], rows[list(rows)[-1]], flush=True)
    lines = [f"# Code length of the data-independent baselines on {name} (no training)", "",
             f"{len(test)} test queries, {len(labels)} labels; PCA-ITQ fitted as in report.md. Float MiniLM: see "
             "report.md.", "", "| codes | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    lines += [f"| {label} | " + " | ".join(f"{100 * entry[key]:.2f}" for key in shown) + " |"
              for label, entry in rows.items()]
    folder = RESULTS / f"prompthash-{name}"
    (folder / "code-length.json").write_text(json.dumps(rows, indent=2) + "\n")
    (folder / "code-length.md").write_text("\n".join(lines) + "\n")


def part_ablation(name: str) -> None:
    """The validation curves of every ``runs/<recipe>*`` run (variants of the recipe trained with ``--set``), with
    the settings that differ between them, into ``ablation.md`` beside the part's report."""
    run_name = TEXT_PARTS[name][0]
    runs = sorted(path for path in (ROOT / "runs").glob(f"{run_name}*") if (path / "log.jsonl").is_file())
    keys = ("init", "bank_init", "prompt", "lr", "epochs")
    loss_keys = ("balanced", "mu")
    lines = [f"# Which training settings let the text-only hash head learn on {name}", "",
             "Validation (Hamming only, the recipe's metric) at each epoch of each run of the recipe and its variants "
             f"(`xmr train {run_name} --set ...`); step 0 is the untrained head. A run that was stopped early shows "
             "the epochs it reached.", "",
             "| run | " + " | ".join(keys + loss_keys) + " | validation by step | best step |",
             "|---|" + "---|" * (len(keys) + len(loss_keys) + 2)]
    rows = []
    for run in runs:
        recipe = json.loads((run / "recipe.json").read_text())
        spec, metric = recipe["prompthash"], recipe["evaluation"]["metric"]
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        curve = [(entry["step"], entry["validation"][metric], entry["validation"].get("P@1")) for entry in log
                 if "validation" in entry]
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        best = (summary.get("best") or {}).get("step", "(unfinished)")
        settings = [spec.get(key, "random" if key.endswith("init") else "") for key in keys]
        settings += [spec.get("loss", {}).get(key, False if key == "balanced" else "") for key in loss_keys]
        rows.append({"run": run.name, "settings": dict(zip(keys + loss_keys, settings, strict=True)),
                     "validation": [{"step": step, metric: value, "P@1": p1} for step, value, p1 in curve],
                     "best_step": best})
        lines.append(f"| {run.name} | " + " | ".join(str(value) for value in settings) + " | " + ", ".join(
            f"{step}: {metric} {100 * value:.1f} / P@1 {100 * p1:.1f}" for step, value, p1 in curve)
            + f" | {best} |")
    folder = RESULTS / f"prompthash-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    (folder / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ---- PyPI summaries ----------------------------------------------------------------------------------------------
def part_pypi(args: argparse.Namespace) -> None:
    import faiss

    cache = Path.home() / ".cache" / "xmr" / "bench-index" / "pypi-minilm"
    chunks = sorted(cache.glob("labels-*.npy"))
    labels = np.concatenate([np.load(path, mmap_mode="r") for path in chunks])[:args.n].astype(np.float32)
    queries = np.load(cache / "queries.npy").astype(np.float32)
    n, k = len(labels), 10
    catalogue = LabelCatalogue.from_records([{"id": i, "text": f"summary {i}"} for i in range(n)])
    exact = faiss.IndexFlatIP(labels.shape[1])
    exact.add(labels)
    truth = exact.search(queries, k)[1]

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found[:, :k], truth, strict=True)]))

    head = load_encoder(args.head)
    label_t, query_t = torch.from_numpy(labels), torch.from_numpy(queries)
    trained_labels = HashCodes.concat([head.from_features([None] * len(part), list(part))
                                       for part in label_t.split(4096)])
    trained_queries = head.from_features(list(query_t), [None] * len(query_t))
    baselines = linear_hashes(labels[:FIT_ROWS], labels, queries, head.bits)
    work = args.out or BENCH / "prompthash-pypi"
    rows = []

    def measure(system: str, built, vectors, knobs: dict, folder_files: tuple[str, ...]) -> None:
        found = built.search_embeddings(vectors, k=k, **knobs).rows
        seconds = best_of(2, lambda: built.search_embeddings(vectors, k=k, **knobs))
        stage_bytes = sum(os.path.getsize(built.path / name) for name in folder_files) if built.path else 0
        rows.append({"system": system, "knobs": knobs, "recall_at_10": recall(found), "qps": len(vectors) / seconds,
                     "resident_bytes_per_label": stage_bytes / n})
        print(rows[-1], flush=True)

    scratch = Path("/tmp") / "prompthash-pypi-indexes"
    systems = [(f"PromptHash head ({args.head_name})", trained_labels, trained_queries)]
    systems += [(name, codes, query_codes) for name, (codes, query_codes) in baselines.items()]
    for name, codes, query_codes in systems:
        for factory, flips in (("BFlat", [{}]), ("BHash4x16", [{"nflip": flip} for flip in (0, 1, 2)])):
            built = build_index_from_embeddings(catalogue, codes, scratch / f"{factory}-{len(rows)}",
                                                recipe=IndexRecipe("bench", factory, rerank=100))
            for flip in flips:  # multi-index hashing: bits flipped per 16-bit sub-code when probing its table
                where = factory + (f" nflip={flip['nflip']}" if flip else "")
                measure(f"{name}, {where}, Hamming only", built, query_codes, {"rerank": 0, **flip},
                        ("index.binary.faiss",))
                for depth in (100, 500):
                    measure(f"{name}, {where} + float re-rank {depth}", built, query_codes,
                            {"rerank": depth, **flip}, ("index.binary.faiss",))
    for factory, knobs in (("Flat", {}), ("HNSW32", {"efSearch": 64})):
        built = build_index_from_embeddings(catalogue, labels, scratch / factory, factory=factory, normalized=True)
        measure(f"float MiniLM {factory}", built, queries, knobs, ("index.faiss",))
    lines = [f"# Hash codes for the PyPI-summary catalogue (first {n:,} of the benchmark's rows, 2,000 queries)", "",
             f"{head.bits}-bit codes; recall@10 against exact float search (IndexFlatIP on the same MiniLM vectors); "
             "QPS: 2,000 queries in one batch, best of 2, 2 shared CPU cores. Resident bytes per label: the index "
             "file (codes + ids, + links for HNSW); the float re-rank reads the memory-mapped float32 vectors "
             "(1,536 bytes per label on disk) for the candidates only.", "",
             "| system | recall@10 | QPS | resident bytes / label |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['system']} | {100 * row['recall_at_10']:.1f} | {row['qps']:.0f} | "
                     f"{row['resident_bytes_per_label']:.0f} |")
    lines += ["", f"PCA-ITQ is fitted (no labels) on the first {min(n, FIT_ROWS):,} label vectors; its codes equal "
              f"faiss `ITQ{head.bits},LSH` bit for bit up to float rounding (checked: a bit may differ only where its "
              f"projection is within 1e-5 of 0). The hash head ({args.head_name}) was trained for "
              "label relevance, not for neighbour preservation on PyPI summaries: recall against exact float search "
              "measures how well it keeps MiniLM's neighbourhoods."]
    if n < args.n:
        lines += ["", f"**{n:,} rows, not the {args.n:,} asked**: only {len(chunks)} of the 50,000-row chunks "
                  "scripts/bench_index.py embeds were cached when this ran."]
    write(work, {"n": n, "asked": args.n, "queries": len(queries), "bits": head.bits, "head": str(args.head),
                 "rows": rows}, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", required=True,
                        choices=["coco", "reuters", "esco", "esco-ablation", "esco-bits", "pypi"])
    parser.add_argument("--n", type=int, default=200_000, help="pypi: catalogue rows (as many as are cached)")
    parser.add_argument("--head", type=Path, default=ROOT / "runs" / "hash-reuters" / "prompthash" / "best",
                        help="pypi: the text hash head (encoder folder)")
    parser.add_argument("--head-name", default="trained on Reuters", help="pypi: how the report names the head")
    parser.add_argument("--out", type=Path, default=None, help="pypi: results (default eval/bench/prompthash-pypi)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "coco":
        part_coco(args)
    elif args.part == "pypi":
        part_pypi(args)
    elif args.part.endswith("-bits"):
        part_code_length(args.part.removesuffix("-bits"))
    elif args.part.endswith("-ablation"):
        part_ablation(args.part.removesuffix("-ablation"))
    else:
        part_text(args.part)


if __name__ == "__main__":
    main()
