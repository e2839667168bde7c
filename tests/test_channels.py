"""Instance-kNN, lexical and fused channels, the vector cache, and ``xmr train --auto`` (issue 19)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xmr
from xmr.catalogue import LabelCatalogue
from xmr.encoders.vector_cache import encode_cached
from xmr.errors import InvalidArgument
from xmr.index.fusion import FusedPredictor, choose_weights, objective
from xmr.index.knn import build_knn_index, sparse_top_k
from xmr.index.lexical import build_lexical_index
from xmr.predictor import load_predictor
from xmr.search import SearchResult
from xmr.train.auto import auto_train, parse_budget

ROOT = Path(__file__).resolve().parents[1]


def catalogue(n: int) -> LabelCatalogue:
    return LabelCatalogue.from_records([{"id": i, "text": f"label {i}"} for i in range(n)])


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_sparse_top_k_orders_and_pads():
    import scipy.sparse as sp

    columns, values = sparse_top_k(sp.csr_array(np.array([[0, 3, 1, 0], [0, 0, 0, 0]], dtype=np.float32)), 3)
    assert columns.tolist() == [[1, 2, -1], [-1, -1, -1]]
    assert values[0, :2].tolist() == [3, 1] and np.isnan(values[0, 2]) and np.isnan(values[1]).all()


def test_knn_votes_follow_neighbours_and_power_sharpens_them(tmp_path):
    # one training query almost on top of the query carries label 1; four farther ones carry label 0
    query = unit(np.array([[1.0, 0.0, 0.0]]))
    train = unit(np.array([[1.0, 0.05, 0.0], *[[1.0, 0.9, s] for s in (0.3, -0.3, 0.5, -0.5)]]))
    knn = build_knn_index(catalogue(3), train, [np.array([1]), *[np.array([0])] * 4], m=5, power=0.0)
    flat = knn.predict_encoded(query, k=2)
    assert flat.rows[0].tolist() == [0, 1]  # equal votes: the majority label
    assert flat.scores[0, 0] == pytest.approx(0.8)  # vote share of 4 of 5 neighbours
    sharp = knn.predict_encoded(query, k=2, power=30.0)
    assert sharp.rows[0, 0] == 1  # the closest neighbour dominates
    assert knn.predict_encoded(query, k=2, m=1).rows[0].tolist() == [1, -1]  # one neighbour: one label
    knn.save(tmp_path / "knn")
    opened = load_predictor(tmp_path / "knn")
    assert opened.kind == "knn-index"
    np.testing.assert_allclose(opened.predict_encoded(query, k=2, power=30.0).scores, sharp.scores)
    with pytest.raises(InvalidArgument, match="efSearch"):
        knn.predict_encoded(query, k=2, efSearch=3)


def test_lexical_prototypes_rank_by_rare_words_and_round_trip(tmp_path):
    texts = ["hydraulic pump repair", "hydraulic valve leak", "cook pasta sauce", "bake bread dough",
             "network security audit", "cloud network outage"] * 2
    rows = [np.array([0]), np.array([0]), np.array([1]), np.array([1]), np.array([2]), np.array([2])] * 2
    lexical = build_lexical_index(catalogue(3), texts, rows)
    result = lexical.predict(["the hydraulic pump", "network audit", "bread sauce"], k=3)
    assert result.rows[:, 0].tolist() == [0, 2, 1]
    lexical.save(tmp_path / "lexical")
    opened = load_predictor(tmp_path / "lexical")
    np.testing.assert_allclose(opened.predict(["the hydraulic pump"], k=3).scores, result.scores[:1], rtol=1e-6)


def fixed_result(rows: list[list[int]], cat: LabelCatalogue, scores: list[float] | None = None) -> SearchResult:
    rows_array = np.array(rows)
    scores = np.tile(scores or np.linspace(1, 0.5, rows_array.shape[1]), (len(rows_array), 1))
    return SearchResult(ids=rows_array, scores=scores, rows=rows_array, catalogue=cat)


def test_choose_weights_prefers_the_right_channel_and_fusion_recovers_complements():
    cat = catalogue(6)
    truth = [np.array([i % 6]) for i in range(12)]
    right = fixed_result([[i % 6, (i + 1) % 6] for i in range(12)], cat)
    wrong = fixed_result([[(i + 2) % 6, (i + 3) % 6] for i in range(12)], cat)
    inverse = np.ones(6)
    chosen = choose_weights({"right": right, "wrong": wrong}, truth, inverse)
    assert chosen["weights"]["right"] > chosen["weights"]["wrong"]
    assert chosen["validation"]["fused"]["P@1"] == 1.0 and chosen["validation"]["wrong"]["P@1"] == 0.0
    # two channels that each have the answer second, and agree on nothing else: the sum puts it first
    a = fixed_result([[(i + 1) % 6, i % 6, (i + 2) % 6] for i in range(12)], cat, [1.0, 0.9, 0.0])
    b = fixed_result([[(i + 3) % 6, i % 6, (i + 4) % 6] for i in range(12)], cat, [1.0, 0.9, 0.0])
    both = choose_weights({"a": a, "b": b}, truth, inverse)
    assert both["validation"]["fused"]["P@1"] == 1.0
    assert both["validation"]["a"]["P@1"] == 0.0 and both["validation"]["b"]["P@1"] == 0.0


def test_fused_predictor_saves_channels_and_predicts_the_same(tmp_path, tiny_encoder):
    cat = LabelCatalogue.from_records([{"id": i, "text": t} for i, t in
                                       enumerate(["python code", "cook food", "drive truck"])])
    texts = ["write python code", "test software code", "cook kitchen food", "food sales", "truck drive", "drive"]
    rows = [np.array([0]), np.array([0]), np.array([1]), np.array([1]), np.array([2]), np.array([2])]
    vectors = tiny_encoder.encode_queries(texts)
    channels = {"text": xmr.build_index(cat, tiny_encoder, None),
                "knn": build_knn_index(cat, vectors, rows, encoder=tiny_encoder, m=3),
                "lexical": build_lexical_index(cat, texts, rows)}
    fused = FusedPredictor(channels, {"text": 0.2, "knn": 0.3, "lexical": 0.5})
    queries = ["python code please", "cook food now"]
    before = fused.predict(queries, k=3)
    fused.save(tmp_path / "fused")
    opened = load_predictor(tmp_path / "fused")
    assert opened.kind == "fused" and opened.weights == fused.weights
    after = opened.predict(queries, k=3)
    assert after.rows.tolist() == before.rows.tolist()
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5)
    assert after.rows[:, 0].tolist() == [0, 1]
    with pytest.raises(InvalidArgument, match="weight per channel"):
        FusedPredictor(channels, {"text": 1.0})


def test_vector_cache_reuses_vectors_and_keys_on_texts(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path))
    calls = []
    original = type(tiny_encoder).encode_queries

    def counting(self, items):
        calls.append(len(items))
        return original(self, items)

    monkeypatch.setattr(type(tiny_encoder), "encode_queries", counting)
    first = encode_cached(tiny_encoder, ["python code", "cook food", "drive truck"], chunk=2)
    again = encode_cached(tiny_encoder, ["python code", "cook food", "drive truck"], chunk=2)
    np.testing.assert_array_equal(first, again)
    assert calls == [2, 1]  # two chunks encoded once, read back the second time
    encode_cached(tiny_encoder, ["python code", "cook food", "sell music"], chunk=2)
    assert calls == [2, 1, 1]  # the first chunk is shared, the changed one is encoded
    np.testing.assert_allclose(first, tiny_encoder.encode_queries(["python code", "cook food", "drive truck"]),
                               rtol=1e-5, atol=1e-6)


def test_parse_budget():
    assert parse_budget("20m") == 1200 and parse_budget("90s") == 90 and parse_budget("1.5h") == 5400
    assert parse_budget(30) == 30
    with pytest.raises(InvalidArgument, match="--budget"):
        parse_budget("soon")


def synthetic_split(path: Path, labels: list[dict], count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for number in range(count):
            chosen = rng.choice(len(labels), 2, replace=False)
            words = " ".join(labels[int(c)]["text"] for c in chosen).split()
            rng.shuffle(words)
            handle.write(json.dumps({"id": number, "text": " ".join(words), "labels": [int(c) for c in chosen]})
                         + "\n")


def test_auto_train_records_choices_and_fused_beats_each_channel_on_validation(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    records = [{"id": i, "text": f"{a} {b}"} for i, (a, b) in enumerate(
        [("python", "code"), ("cook", "food"), ("drive", "truck"), ("teach", "children"), ("paint", "wall"),
         ("cloud", "network"), ("account", "finance"), ("repair", "machine"), ("music", "sales"), ("build", "house")])]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    synthetic_split(tmp_path / "train.jsonl", records, 600, 0)
    summary = auto_train(tmp_path / "labels.jsonl", tmp_path / "train.jsonl", tmp_path / "run", "5m",
                         say=lambda *_: None, encoder={"type": "sentence-transformers", "model": tiny_model})
    choices = json.loads((tmp_path / "run" / "choices.json").read_text())
    assert {entry["what"] for entry in choices} >= {"encoder", "fine-tuning", "dense training queries",
                                                     "validation queries", "knn knobs", "fusion weights"}
    assert all(entry["reason"] for entry in choices)
    assert summary["dense_training_queries"] == 600 and summary["training_queries"] == 600
    validation = summary["validation"]
    fused = objective(validation["fused"])
    assert all(fused >= objective(validation[name]) - 1e-9 for name in ("text", "centroid", "knn", "lexical"))
    assert sum(summary["weights"].values()) == pytest.approx(1.0)
    predictor = load_predictor(tmp_path / "run" / "index")
    synthetic_split(tmp_path / "test.jsonl", records, 100, 1)
    report = xmr.evaluate(predictor, tmp_path / "test.jsonl", ks=(1, 3), train=tmp_path / "train.jsonl")
    assert report["metrics"]["P@1"] > 0.9  # two of ten labels per text, words of both present: lexical nails it


def test_auto_fine_tuning_raises_the_label_text_channel_and_records_its_schedule(tmp_path, tiny_model, monkeypatch):
    from conftest import synthetic_task

    import xmr.train.auto_fine_tune as stage

    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stage, "SETTINGS", {**stage.SETTINGS, "optimizer": {"lr": 1e-3}})  # a tiny model's rate
    monkeypatch.setattr(stage, "EPOCHS", 8.0)
    task = synthetic_task(tmp_path / "task")  # label and query texts share no words: zero-shot text fails
    runs = {tuned: auto_train(task / "labels.jsonl", task / "train.jsonl", tmp_path / f"run-{tuned}", "5m",
                              say=lambda *_: None, encoder={"type": "sentence-transformers", "model": tiny_model},
                              fine_tune=tuned) for tuned in (False, True)}
    frozen, tuned = (runs[key]["validation"]["text"]["P@1"] for key in (False, True))
    assert tuned > frozen + 0.2
    choices = {entry["what"]: entry for entry in json.loads((tmp_path / "run-True" / "choices.json").read_text())}
    assert choices["negatives"]["value"] == {"all_labels_up_to": 256}  # 24 labels: all of them as columns
    assert choices["fine-tuning"]["value"]["steps"] == 8 * 7  # 216 queries / 32 a batch = 7 a batch, 8 epochs
    assert (tmp_path / "run-True" / "fine-tune.yaml").is_file()
    served = xmr.load_predictor(tmp_path / "run-True" / "index").channels["text"].encoder.model_name
    assert Path(served).is_relative_to(choices["fine-tuning"]["value"]["encoder"])  # the index serves the tuned one


def test_auto_fine_tuning_of_a_large_catalogue_mines_hard_negatives(tmp_path, tiny_model, monkeypatch):
    """Above ``ALL_LABELS_UP_TO`` labels the batches take in-batch plus index-mined negatives (here 24 > 8)."""
    from conftest import synthetic_task

    import xmr.train.auto_fine_tune as stage

    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stage, "SETTINGS", {**stage.SETTINGS, "optimizer": {"lr": 1e-3}})
    monkeypatch.setattr(stage, "EPOCHS", 8.0)
    monkeypatch.setattr(stage, "ALL_LABELS_UP_TO", 8)
    monkeypatch.setattr(stage, "MINE_EVERY", 10)
    task = synthetic_task(tmp_path / "task")
    messages = []
    summary = auto_train(task / "labels.jsonl", task / "train.jsonl", tmp_path / "run", "5m", say=messages.append,
                         encoder={"type": "sentence-transformers", "model": tiny_model}, fine_tune=True)
    choices = {entry["what"]: entry for entry in json.loads((tmp_path / "run" / "choices.json").read_text())}
    assert choices["negatives"]["value"] == {"all_labels_up_to": 0, "mined": {
        "per_query": 1, "depth": stage.MINE_DEPTH, "refresh_every": 10, "cached_first": True}}
    refreshes = [message for message in messages if "hard negatives for" in message]
    assert len(refreshes) >= 8 * 7 // 10 and refreshes[0].startswith("step 0:")
    assert summary["validation"]["text"]["P@1"] > 0.25  # 0.04 before the steps: label and query words differ


def test_cli_auto_bad_budget_is_one_line(tmp_path):
    command = [sys.executable, "-m", "xmr.cli", "train", "--auto", str(tmp_path / "labels.jsonl"),
               str(tmp_path / "train.jsonl"), "--budget", "soon"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["xmr: error: --budget: 'soon' is not a duration like 20m, 90s or 1h"]


def test_auto_recipe_reads_method_auto_and_reports_missing_fields(tmp_path):
    from xmr.train.auto import auto_recipe
    from xmr.train.recipe import RecipeError

    settings = auto_recipe(ROOT / "training" / "tibkat-auto.yaml")
    assert settings == {"name": "tibkat-auto", "labels": "../shared/data/tibkat_gnd_en/labels.jsonl",
                        "train": "../shared/data/tibkat_gnd_en/train.jsonl", "budget": "20m", "seed": 0,
                        "fine_tune": True, "learned": True}
    assert auto_recipe(ROOT / "training" / "reuters-minilm.yaml") is None  # any other recipe: load_recipe's
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmethod: auto\ndata: {labels: l.jsonl}\nauto: {budget: 5m, steps: 3, learned: 1}\n")
    with pytest.raises(RecipeError, match=r"data.train: required by method auto; auto.steps: unknown field "
                                          r"\(known: budget, fine_tune, learned\); auto.learned: true or false"):
        auto_recipe(broken)


def test_auto_learned_label_vectors_beat_the_centroid_channel_and_encode_nothing_again(tmp_path, tiny_model,
                                                                                       monkeypatch):
    """The learned channel (text + centroid + per-label classifier, epoch chosen on validation) raises validation
    P@1 above the untrained text + centroid channel, and reads every vector from the cache the channels filled."""
    from conftest import synthetic_task

    import xmr.train.auto_label_vectors as stage
    from xmr.encoders.sentence_transformer import SentenceTransformerEncoder

    monkeypatch.setattr(stage, "SETTINGS", {**stage.SETTINGS, "lr": 1e-2})  # 216 queries: one step an epoch
    encoded = []
    original = SentenceTransformerEncoder.encode_queries

    def counting(self, items):
        encoded.append(len(items))
        return original(self, items)

    monkeypatch.setattr(SentenceTransformerEncoder, "encode_queries", counting)
    task = synthetic_task(tmp_path / "task")  # label and query texts share no words
    runs = {}
    for learn in (False, True):
        monkeypatch.setenv("XMR_CACHE", str(tmp_path / f"cache-{learn}"))
        encoded.clear()
        runs[learn] = auto_train(task / "labels.jsonl", task / "train.jsonl", tmp_path / f"run-{learn}", "5m",
                                 say=lambda *_: None, encoder={"type": "sentence-transformers", "model": tiny_model},
                                 fine_tune=False, learn=learn)
        runs[learn]["encoded"] = sum(encoded)
    assert runs[True]["encoded"] == runs[False]["encoded"]  # the stage encoded no query the channels had not
    validation = runs[True]["validation"]
    assert validation["learned"]["P@1"] > validation["centroid"]["P@1"] + 0.05
    choices = {entry["what"]: entry for entry in json.loads((tmp_path / "run-True" / "choices.json").read_text())}
    assert choices["learned label vectors"]["value"]["epoch"] >= 1
    assert choices["learned label vectors"]["value"]["shortlist"] == 0  # 24 labels: all of them as columns
    assert "learned" not in runs[False]["validation"]
    fused = load_predictor(tmp_path / "run-True" / "index")
    assert "learned" in fused.channels and runs[True]["weights"]["learned"] > 0
