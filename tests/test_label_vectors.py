"""Learned label vectors: balanced clusters, centroids, the combiners, training on frozen queries, the final index."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_task

import xmr
from xmr.train import train
from xmr.train.label_vectors import (
    LabelParts,
    LabelVectorModel,
    balanced_clusters,
    combined_vectors,
    label_centroids,
    train_label_vectors,
)


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


@pytest.mark.parametrize("combine", ["sum", "gated", "transformer"])
@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_learned_vectors_beat_text_and_keep_zero_shot_labels(combine, loss):
    text, queries, positives = frozen_task()
    train_q, test_q, train_p, test_p = queries[:300], queries[300:], positives[:300], positives[300:]
    centroids, counts = label_centroids(train_q, train_p, len(text))
    torch.manual_seed(0)
    model = LabelVectorModel(LabelParts(text, centroids, counts, balanced_clusters(text, 4)),
                             ["text", "centroid", "cluster", "classifier"], combine)
    fit = train_label_vectors(model, train_q, train_p, loss=loss, epochs=30, batch_size=64, lr=2e-2, shortlist=8)
    assert fit.losses[-1] < 0.8 * fit.losses[0] and fit.best_epoch == 30
    vectors = combined_vectors(model)
    assert p_at_1(vectors, test_q, test_p) > p_at_1(text, test_q, test_p) + 0.15
    assert np.array_equal(vectors[-1], text[-1])  # no training queries: the text embedding, unchanged


def test_validation_keeps_the_best_epoch_and_refuses_training_that_hurts():
    text, queries, positives = frozen_task()
    train_q, valid_q, train_p, valid_p = queries[:300], queries[300:], positives[:300], positives[300:]
    no_parts = LabelParts(text, np.zeros_like(text), np.ones(len(text)), np.zeros(len(text), dtype=np.int64))
    scores = []

    def validate(vectors):
        scores.append(p_at_1(vectors, valid_q, valid_p))
        return scores[-1]

    torch.manual_seed(0)
    model = LabelVectorModel(no_parts, ["text", "classifier"], "sum")
    fit = train_label_vectors(model, train_q, train_p, epochs=8, batch_size=64, lr=2e-2, validate=validate)
    assert fit.validation == scores and len(scores) == 9 and fit.best_epoch == int(np.argmax(scores))
    assert fit.best_epoch > 0 and p_at_1(combined_vectors(model), valid_q, valid_p) == max(scores)

    wrong = [np.array([(p[0] + 1) % (len(text) - 1)]) for p in train_p]  # every training label is wrong
    model = LabelVectorModel(no_parts, ["text", "classifier"], "sum")
    fit = train_label_vectors(model, train_q, wrong, epochs=5, batch_size=64, lr=2e-2, validate=validate)
    assert fit.losses[-1] < fit.losses[0] and fit.best_epoch == 0
    assert np.array_equal(combined_vectors(model), text)  # the untrained state came back


def test_text_only_and_bad_parts_are_refused():
    text, queries, positives = frozen_task()
    centroids, counts = label_centroids(queries, positives, len(text))
    parts = LabelParts(text, centroids, counts, np.zeros(len(text), dtype=np.int64))
    with pytest.raises(ValueError, match="must include 'text'"):
        LabelVectorModel(parts, ["centroid"], "sum")
    with pytest.raises(ValueError, match="combine"):
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
    train(tmp_path / "lv.yaml", say=lambda message: None)
    run = tmp_path / "runs/lv"
    learned = xmr.load_index(run / "index")
    encoder = xmr.load_encoder(run / "encoder")
    text_only = xmr.build_index(xmr.LabelCatalogue.from_file(task / "labels.jsonl"), encoder, None)
    scores = {name: xmr.evaluate(index, task / "test.jsonl", ks=(1,))["metrics"]["P@1"]
              for name, index in (("learned", learned), ("text", text_only))}
    assert scores["learned"] > scores["text"] + 0.1, scores
    row = learned.catalogue.position(999)
    stored = learned.faiss_index.reconstruct(int(learned.internal_ids[row]))
    assert np.allclose(stored, encoder.encode_labels(["forklift music"])[0], atol=1e-5)
    assert learned.manifest["normalized"] is False
