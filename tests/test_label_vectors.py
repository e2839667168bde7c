"""Learned label vectors: balanced clusters, centroids, the combiners, the label-vectors task trained through the
loop on frozen query vectors, and the final index."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import synthetic_task
from safetensors.numpy import load_file

import xmr
from xmr.datasets import Instances
from xmr.train import RecipeError, load_recipe, train
from xmr.train.label_vectors import LabelParts, LabelVectorModel, balanced_clusters, label_centroids
from xmr.train.recipe import IndexSpec
from xmr.train.tasks import TASKS
from xmr.train.tasks.label_vectors import LabelVectorInputs, LabelVectorsSpec, LabelVectorsTask


def test_balanced_clusters_are_equal_sized_and_group_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    members = np.repeat(np.arange(4), 10)
    vectors = centres[members] + 0.05 * rng.normal(size=(40, 8))
    clusters = balanced_clusters(vectors, 4)
    assert sorted(np.bincount(clusters)) == [10, 10, 10, 10]
    assert all(len(set(members[clusters == cluster])) == 1 for cluster in range(4))


def test_label_centroids_average_their_queries():
    queries = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    centroids, counts = label_centroids(queries, [np.array([0]), np.array([0, 1]), np.array([1])], 3)
    assert counts.tolist() == [2, 2, 0]
    assert np.allclose(centroids[0], np.array([1, 1]) / np.sqrt(2))
    assert np.allclose(centroids[1], np.array([1, 2]) / np.sqrt(5))
    assert np.allclose(centroids[2], 0)


def frozen_task(n_labels=20, n_queries=400, dim=16, seed=0):
    """Queries scatter around hidden label prototypes; label TEXT vectors are only weakly related to them."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(n_labels, dim))
    text = prototypes + 2.0 * rng.normal(size=(n_labels, dim))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    positives = [np.array([rng.integers(n_labels - 1)]) for _ in range(n_queries)]  # the last label has no data
    queries = np.stack([prototypes[p[0]] + 0.8 * rng.normal(size=dim) for p in positives])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return text.astype(np.float32), queries.astype(np.float32), positives


def p_at_1(vectors, queries, positives):
    return np.mean([np.argmax(vectors @ q) in p for q, p in zip(queries, positives, strict=True)])


@dataclass
class FrozenSections:
    label_vectors: LabelVectorsSpec = field(default_factory=LabelVectorsSpec)
    index: IndexSpec | None = None


def register_frozen(monkeypatch, text, queries, positives, validation_queries=None, validation_positives=None):
    """Method ``frozen-label-vectors``: the label-vectors task on the given vectors instead of an encoder's."""
    labels = xmr.LabelCatalogue.from_records([{"id": row, "text": f"label {row}"} for row in range(len(text))])
    validation = None if validation_queries is None else Instances(
        list(range(len(validation_queries))), ["query"] * len(validation_queries),
        [[int(label) for label in row] for row in validation_positives])

    class FrozenLabelVectors(LabelVectorsTask):
        sections = FrozenSections

        def inputs(self) -> LabelVectorInputs:
            return LabelVectorInputs(labels, text, queries, positives, validation=validation,
                                     validation_vectors=validation_queries)

    monkeypatch.setitem(TASKS, "frozen-label-vectors", FrozenLabelVectors)


def train_frozen(folder: Path, checkpoint_every: int = 1000, resume: bool = False, **label_vectors) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"name": "frozen", "method": "frozen-label-vectors", "output": str(folder / "runs"), "index": {},
              "checkpoint": {"every": checkpoint_every}, "label_vectors": label_vectors}
    (folder / "frozen.yaml").write_text(yaml.safe_dump(recipe))
    train(folder / "frozen.yaml", resume=resume, say=lambda message: None)
    return folder / "runs/frozen"


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def best_vectors(run: Path) -> np.ndarray:
    return load_file(run / "label-vectors/best/vectors.safetensors")["vectors"]


@pytest.mark.parametrize("combine", ["sum", "gated", "transformer"])
@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_learned_vectors_beat_text_and_keep_zero_shot_labels(tmp_path, monkeypatch, combine, loss):
    text, queries, positives = frozen_task()
    train_q, test_q, train_p, test_p = queries[:300], queries[300:], positives[:300], positives[300:]
    register_frozen(monkeypatch, text, train_q, train_p)
    run = train_frozen(tmp_path, parts=["text", "centroid", "cluster", "classifier"], combine=combine, loss=loss,
                       clusters=4, epochs=30, batch_size=64, lr=2e-2, shortlist=8)
    losses = [entry["loss"] for entry in logged(run) if "loss" in entry]
    assert len(losses) == 30 * 5 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 30 and summary["best"] is None  # no validation: the last epoch is kept
    vectors = best_vectors(run)
    assert p_at_1(vectors, test_q, test_p) > p_at_1(text, test_q, test_p) + 0.15
    assert np.array_equal(vectors[-1], text[-1])  # no training queries: the text embedding, unchanged


def test_validation_keeps_the_best_epoch_and_refuses_training_that_hurts(tmp_path, monkeypatch):
    text, queries, positives = frozen_task()
    train_q, valid_q, train_p, valid_p = queries[:300], queries[300:], positives[:300], positives[300:]
    settings = {"parts": ["text", "classifier"], "combine": "sum", "epochs": 8, "batch_size": 64, "lr": 2e-2}
    register_frozen(monkeypatch, text, train_q, train_p, valid_q, valid_p)
    run = train_frozen(tmp_path / "right", **settings)
    validations = [entry for entry in logged(run) if "validation" in entry]
    assert [entry["step"] for entry in validations] == [5 * epoch for epoch in range(9)]  # epoch 0: untrained
    scores = [entry["validation"]["P@1"] for entry in validations]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == int(np.argmax(scores)) > 0 and summary["best"]["value"] == max(scores)
    assert p_at_1(best_vectors(run), valid_q, valid_p) == pytest.approx(max(scores))
    assert xmr.load_index(run / "index").manifest["representation"]["normalized"] is False

    wrong = [np.array([(p[0] + 1) % (len(text) - 1)]) for p in train_p]  # every training label is wrong
    register_frozen(monkeypatch, text, train_q, wrong, valid_q, valid_p)
    run = train_frozen(tmp_path / "wrong", **{**settings, "epochs": 5})
    losses = [entry["loss"] for entry in logged(run) if "loss" in entry]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == 0
    assert np.array_equal(best_vectors(run), text)  # the untrained state came back
    assert not np.array_equal(load_file(run / "label-vectors/last/vectors.safetensors")["vectors"], text)


def test_label_vectors_resume_exactly_after_a_crash(tmp_path, monkeypatch):
    text, queries, positives = frozen_task()
    data = (text, queries[:300], positives[:300], queries[300:], positives[300:])
    settings = {"combine": "transformer", "clusters": 4, "epochs": 4, "batch_size": 64, "lr": 2e-2, "shortlist": 8}
    register_frozen(monkeypatch, *data)
    straight = train_frozen(tmp_path / "straight", **settings)

    def crash(self, step: int, position: int, steps_left: int) -> None:
        if step == 13:
            raise RuntimeError("crash")

    register_frozen(monkeypatch, *data)
    monkeypatch.setattr(TASKS["frozen-label-vectors"], "before_step", crash)
    with pytest.raises(RuntimeError, match="crash"):
        train_frozen(tmp_path / "crashed", checkpoint_every=7, **settings)
    assert not (tmp_path / "crashed/runs/frozen/stages").exists()
    register_frozen(monkeypatch, *data)
    crashed = train_frozen(tmp_path / "crashed", checkpoint_every=7, resume=True, **settings)  # from step 7
    assert np.array_equal(best_vectors(straight), best_vectors(crashed))
    assert [entry.get("validation") for entry in logged(straight)] == [entry.get("validation")
                                                                      for entry in logged(crashed)]
    assert [entry.get("loss") for entry in logged(straight)] == [entry.get("loss") for entry in logged(crashed)]


def test_text_only_and_bad_parts_are_refused():
    text, queries, positives = frozen_task()
    centroids, counts = label_centroids(queries, positives, len(text))
    parts = LabelParts(text, centroids, counts, np.zeros(len(text), dtype=np.int64))
    with pytest.raises(RecipeError, match="must include 'text'"):
        LabelVectorModel(parts, ["centroid"], "sum")
    with pytest.raises(RecipeError, match="combine"):
        LabelVectorModel(parts, ["text"], "concat")


def test_recipe_stage_two_writes_an_index_of_learned_vectors(tmp_path, tiny_model):
    task = synthetic_task(tmp_path / "task")
    labels = [json.loads(line) for line in (task / "labels.jsonl").read_text().splitlines()]
    labels.append({"id": 999, "text": "forklift music", "note": "no training queries"})
    (task / "labels.jsonl").write_text("".join(json.dumps(record) + "\n" for record in labels))
    recipe = {"name": "lv", "output": str(tmp_path / "runs"),
              "data": {"train": str(task / "train.jsonl"), "labels": str(task / "labels.jsonl"),
                       "validation": str(task / "validation.jsonl")},
              "encoder": {"type": "sentence-transformers", "model": tiny_model},
              "batching": {"batch_size": 16}, "optimizer": {"lr": 1e-3}, "schedule": {"epochs": 2},
              "evaluation": {"every": 100}, "checkpoint": {"every": 100}, "index": {},
              "label_vectors": {"combine": "gated", "epochs": 40, "lr": 2e-2}}
    (tmp_path / "lv.yaml").write_text(yaml.safe_dump(recipe))
    assert list(load_recipe(tmp_path / "lv.yaml").tasks) == ["dual-encoder", "label-vectors"]
    summary = train(tmp_path / "lv.yaml", say=lambda message: None)
    run = tmp_path / "runs/lv"
    assert summary["index"] == str(run / "index") and summary["label-vectors"]["steps"] == 40  # 1 batch an epoch
    assert {path.name for path in (run / "stages").iterdir()} == {"dual-encoder.json", "label-vectors.json"}
    learned = xmr.load_index(run / "index")
    encoder = xmr.load_encoder(run / "encoder")
    text_only = xmr.build_index(xmr.LabelCatalogue.from_file(task / "labels.jsonl"), encoder, None)
    scores = {name: xmr.evaluate(index, task / "test.jsonl", ks=(1,))["metrics"]["P@1"]
              for name, index in (("learned", learned), ("text", text_only))}
    assert scores["learned"] > scores["text"] + 0.1, scores
    vectors = best_vectors(run)
    assert np.allclose(vectors[learned.catalogue.position(999)], encoder.encode_labels(["forklift music"])[0],
                       atol=1e-5)
    query = encoder.encode_queries(["forklift truck"])
    found = learned.search_embeddings(query, k=len(vectors))  # the index holds exactly the learned vectors
    assert np.allclose(found.scores[0], (vectors @ query[0])[found.rows[0]], atol=1e-5)
    assert learned.manifest["representation"]["normalized"] is False
