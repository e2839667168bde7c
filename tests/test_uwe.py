"""UWE: the soft late-interaction score and its limits, the token index stages, the encoder, the graph mixture and
the ``uwe`` task learning a task a tiny model must learn (in both directions, over two graphs)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import label_records, synthetic_task

import xmr
from xmr.catalogue import LabelCatalogue
from xmr.errors import IndexFolderError
from xmr.evaluation import evaluate
from xmr.train import RecipeError, load_recipe, train
from xmr.train.batches import TrainingPairs
from xmr.uwe import build_uwe_index, soft_late_interaction
from xmr.uwe.esco import split_occupation
from xmr.uwe.graphs import Graph, graph_batch, mixture_plan, reversed_pairs
from xmr.uwe.scoring import pad_ragged


def unit(values: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(values, dim=-1)


def random_tokens(seed: int, n: int, length: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = unit(torch.randn(n, length, dim, generator=generator))
    lengths = torch.randint(1, length + 1, (n,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return tokens * mask[..., None], mask


def test_pooled_target_score_is_the_context_match_formula():
    queries, query_mask = random_tokens(0, 3, 6)
    targets = torch.randn(4, 1, 8, generator=torch.Generator().manual_seed(1)) * 3
    scores = soft_late_interaction(queries, query_mask, targets, torch.ones(4, 1, dtype=torch.bool), 0.7)
    for q in range(3):
        real = queries[q][query_mask[q]]
        for t in range(4):
            e = targets[t, 0]
            weights = torch.softmax(real @ e / 0.7, dim=0)
            expected = (weights * torch.nn.functional.cosine_similarity(real, e[None], dim=1)).sum()
            assert scores[q, t] == pytest.approx(float(expected), abs=1e-5)


def test_temperature_to_zero_is_maxsim_and_large_is_the_mean():
    queries, query_mask = random_tokens(2, 3, 7)
    targets, target_mask = random_tokens(3, 5, 4)
    cos = torch.einsum("qld,tmd->qtlm", queries, targets)
    real = query_mask[:, None, :, None] & target_mask[None, :, None, :]
    best_over_query = cos.masked_fill(~real, -9).amax(2)  # (q, t, m)
    best_over_target = cos.masked_fill(~real, -9).amax(3)  # (q, t, l)
    colbert_t = (best_over_query * target_mask[None]).sum(2) / target_mask.sum(1)[None]
    colbert_q = (best_over_target * query_mask[:, None]).sum(2) / query_mask.sum(1)[:, None]
    mean_cos = (cos * real).sum((2, 3)) / real.sum((2, 3))
    sharp = soft_late_interaction(queries, query_mask, targets, target_mask, 1e-4, symmetric=True)
    flat = soft_late_interaction(queries, query_mask, targets, target_mask, 1e4, symmetric=True)
    assert torch.allclose(sharp, (colbert_t + colbert_q) / 2, atol=1e-4)
    assert torch.allclose(flat, mean_cos, atol=1e-4)
    one = targets[:, :1]  # one target vector: ColBERT MaxSim over the query's tokens, and the mean cosine
    single = torch.ones(5, 1, dtype=torch.bool)
    assert torch.allclose(soft_late_interaction(queries, query_mask, one, single, 1e-4),
                          best_over_query[..., 0].clamp(min=-1), atol=1e-4)
    assert torch.allclose(soft_late_interaction(queries, query_mask, one, single, 1e4),
                          (cos[..., 0] * query_mask[:, None]).sum(2) / query_mask.sum(1)[:, None], atol=1e-4)
    assert not torch.allclose(sharp, flat, atol=1e-2)  # the temperature matters in between


def test_padding_never_changes_a_score_and_gathered_candidates_match_all_pairs():
    queries, query_mask = random_tokens(4, 2, 5)
    targets, target_mask = random_tokens(5, 3, 4)
    wider = torch.cat([queries, torch.randn(2, 3, 8)], dim=1)  # garbage in padded positions
    wider_mask = torch.cat([query_mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    for symmetric in (False, True):
        base = soft_late_interaction(queries, query_mask, targets, target_mask, 0.2, symmetric)
        assert torch.allclose(base, soft_late_interaction(wider, wider_mask, targets, target_mask, 0.2, symmetric))
        rows = torch.tensor([[2, 0], [1, 1]])
        gathered = soft_late_interaction(queries, query_mask, targets[rows], target_mask[rows], 0.2, symmetric)
        assert torch.allclose(gathered, base.gather(1, rows), atol=1e-6)
    padded, mask = pad_ragged(torch.arange(12.0).reshape(6, 2), torch.tensor([0, 1, 1, 6]))
    assert mask.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert padded[2, 4].tolist() == [10.0, 11.0] and padded[1].abs().sum() == 0


@pytest.fixture(scope="module")
def catalogue() -> LabelCatalogue:
    return LabelCatalogue.from_records(label_records(60), source="labels")


def uwe_encoder(tiny_model: str, **options):
    return xmr.load_encoder({"type": "uwe-late-interaction", "model": tiny_model, "device": "cpu", **options})


@pytest.mark.parametrize("target", ["pooled", "tokens"])
def test_index_reranks_the_faiss_top_k_and_the_folder_records_the_stage(tmp_path, tiny_model, catalogue, target):
    encoder = uwe_encoder(tiny_model, target=target, normalize_tokens=True, temperature=0.2)
    build_uwe_index(catalogue, encoder, tmp_path / "index", rerank=15)
    index = xmr.load_index(tmp_path / "index")
    queries = ["python sql data engineer", "cook food kitchen", "drive truck forklift"]
    encoded = encoder.encode(queries, "query")
    labels = encoder.encode(catalogue.items(), "label")
    pooled = index.predict_encoded(encoded, k=15, rerank=0)
    assert np.array_equal(pooled.rows, np.argsort(-(encoded.pooled @ labels.pooled.T), axis=1)[:, :15])
    reranked = index.predict_encoded(encoded, k=5)
    for query in range(3):  # the best 5 of the FAISS top 15 by the late-interaction score, nothing from outside
        q_tokens, q_mask = pad_ragged(torch.from_numpy(encoded.take([query]).values.astype(np.float32)),
                                      torch.tensor(encoded.take([query]).offsets))
        candidates = labels.take(pooled.rows[query])
        t_tokens, t_mask = pad_ragged(torch.from_numpy(candidates.values.astype(np.float32)),
                                      torch.tensor(candidates.offsets))
        scores = soft_late_interaction(q_tokens, q_mask, t_tokens, t_mask, 0.2, target == "tokens")[0].numpy()
        assert list(reranked.rows[query]) == list(pooled.rows[query][np.argsort(-scores, kind="stable")[:5]])
        assert np.allclose(reranked.scores[query], np.sort(scores)[::-1][:5], atol=1e-3)
    assert not np.array_equal(reranked.rows, pooled.rows[:, :5])  # the re-rank changes the order somewhere
    stage = index.manifest["stages"][1]
    assert stage | {"bytes_per_label": 0} == {"role": "rerank", "type": "late-interaction",
                                               "files": ["tokens.npy", "token_offsets.npy"], "depth": 15,
                                               "temperature": 0.2, "target": target, "tokens": len(labels.values),
                                               "dim": 32, "bytes_per_label": 0}
    expected_bytes = len(labels.values) * 32 * 2 / 60 + 8 * 61 / 60
    assert stage["bytes_per_label"] == pytest.approx(expected_bytes, abs=0.1)
    assert target == "tokens" or len(labels.values) == 60  # ConTeXT-match: one vector per label
    assert {"tokens.npy", "token_offsets.npy", "index.faiss"} <= set(index.manifest["files"])
    assert index.predict(queries, k=5).rows.tolist() == reranked.rows.tolist()  # text queries: the same pipeline


def test_a_changed_token_file_is_refused(tmp_path, tiny_model, catalogue):
    build_uwe_index(catalogue, uwe_encoder(tiny_model), tmp_path / "index", rerank=10)
    tokens = np.load(tmp_path / "index" / "tokens.npy")
    np.save(tmp_path / "index" / "tokens.npy", tokens * np.float16(2))
    with pytest.raises(IndexFolderError, match="tokens.npy"):
        xmr.load_index(tmp_path / "index")


def test_added_and_removed_labels_keep_their_tokens(tmp_path, tiny_model, catalogue):
    encoder = uwe_encoder(tiny_model, target="tokens")
    index = build_uwe_index(catalogue.take(list(range(50))), encoder, None, rerank=10)
    index.add([{"id": 1000, "text": "python sql java"}])
    index.remove([3, 7])
    stage = index.rerankers[0]
    kept = [row for row in range(50) if row not in (3, 7)]
    expected = xmr.representations.TokenVectors.concat([
        encoder.encode(catalogue.take(kept).items(), "label"), encoder.encode(["python sql java"], "label")])
    assert np.array_equal(stage.offsets, expected.offsets) and np.allclose(stage.tokens, expected.values, atol=1e-3)
    index.save(tmp_path / "changed")
    assert xmr.load_index(tmp_path / "changed").predict(["python sql java"], k=1).label_ids(0) == [1000]


def test_encoder_folder_with_projection_reloads_to_the_same_vectors(tmp_path, tiny_model):
    encoder = uwe_encoder(tiny_model, projection_dim=16)
    with torch.no_grad():
        encoder.projection.weight.mul_(0.5).add_(0.01)
    encoder.save(tmp_path / "encoder")
    again = xmr.load_encoder(tmp_path / "encoder")
    items = ["python sql", "cook food kitchen music"]
    first, second = encoder.encode(items, "query"), again.encode(items, "query")
    assert first.dim == 16 and np.array_equal(first.offsets, second.offsets)
    assert np.allclose(first.values, second.values, atol=1e-3) and np.allclose(first.pooled, second.pooled, atol=1e-5)
    plain = uwe_encoder(tiny_model)  # without a projection the pooled vector is the ST mean-pooled embedding
    dense = xmr.load_encoder(tiny_model, device="cpu").encode_queries(items)
    assert np.allclose(plain.encode(items, "query").pooled, dense, atol=1e-5)


def test_reversed_graph_and_mixture_plan_follow_the_weights():
    labels = LabelCatalogue.from_records([{"id": i, "text": f"label {i}"} for i in range(3)], source="l")
    pairs = TrainingPairs(["a", "b", "c"], [np.array([0]), np.array([0, 2]), np.array([2])], labels)
    back = reversed_pairs(pairs, "back")
    assert back.queries == ["label 0", "label 2"] and [r.tolist() for r in back.positives] == [[0, 1], [1, 2]]
    assert back.labels.texts == ["a", "b", "c"]
    many = TrainingPairs([f"q{i}" for i in range(400)], [np.array([i % 3]) for i in range(400)], labels)
    graphs = [Graph("a", many, 3.0), Graph("b", many, 1.0)]
    chosen, batches = mixture_plan(graphs, 4, seed=0, epoch=0)
    assert len(chosen) == len(batches) == 200 and abs(np.mean(chosen == 0) - 0.75) < 0.08
    again, _ = mixture_plan(graphs, 4, seed=0, epoch=0)
    assert np.array_equal(chosen, again) and not np.array_equal(chosen, mixture_plan(graphs, 4, 0, 1)[0])
    assert all(len(set(batch.tolist())) == len(batch) for batch in batches)


def test_graph_batches_sample_edges_but_never_take_a_positive_for_a_negative():
    labels = LabelCatalogue.from_records([{"id": i, "text": f"label {i}"} for i in range(40)], source="l")
    pairs = TrainingPairs(["a", "b"], [np.arange(0, 30), np.arange(25, 40)], labels)
    batch = graph_batch(Graph("g", pairs, 1.0, positives_per_query=3), np.array([0, 1]), np.random.default_rng(0),
                        all_labels=False)
    assert len(batch.columns) <= 6 and batch.positives.sum(1).min() >= 3
    for position, row in enumerate((0, 1)):
        assert np.array_equal(batch.positives[position], np.isin(batch.columns, pairs.positives[row]))
        assert batch.positives[position, batch.anchors[position]]
    whole = graph_batch(Graph("g", pairs, 1.0), np.array([0, 1]), np.random.default_rng(0), all_labels=False)
    assert np.array_equal(whole.columns, np.arange(40))


def test_occupation_strings_split_into_preferred_name_and_titles():
    text = ("technical director technical manager head of technical Technical directors realise the artistic "
            "visions of the creators.")
    assert split_occupation(text) == ("technical director", "technical manager head of technical")
    assert split_occupation("bus driver coach driver Bus drivers drive buses.") == ("bus driver", "coach driver")
    assert split_occupation("no description here") is None


def write_recipe(folder: Path, task: Path, tiny_model: str, **changes) -> Path:
    recipe = {
        "name": "uwe", "method": "uwe", "output": str(folder / "runs"),
        "graphs": [{"name": "query-label", "train": str(task / "train.jsonl"), "labels": str(task / "labels.jsonl"),
                    "weight": 2.0},
                   {"name": "label-query", "train": str(task / "train.jsonl"), "labels": str(task / "labels.jsonl"),
                    "reverse": True}],
        "validation": str(task / "validation.jsonl"),
        "encoder": {"type": "uwe-late-interaction", "model": tiny_model, "normalize_tokens": True,
                    "temperature": 0.1},
        "loss": {"pooled_weight": 0.5},
        "batching": {"batch_size": 16},
        "optimizer": {"lr": 3e-3},
        "schedule": {"max_steps": 60},
        "evaluation": {"every": 60, "ks": [1, 3], "metric": "P@1", "before": True},
        "checkpoint": {"every": 30},
        "index": {"rerank": 10, "graphs": ["label-query"]},
        **changes,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_problems_are_named(tmp_path, tiny_model):
    task = synthetic_task(tmp_path / "task", n_train=20, n_test=4)
    recipe = write_recipe(tmp_path, task, tiny_model, index={"graphs": ["nope"], "rerank": 0},
                          loss={"pooled_weight": -1})
    values = yaml.safe_load(recipe.read_text())
    values["graphs"][1]["weight"] = 0
    recipe.write_text(yaml.safe_dump(values))
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    for problem in ("index.graphs: 'nope'", "graphs[1].weight", "loss.pooled_weight", "index.rerank"):
        assert problem in str(error.value)


def test_uwe_training_lowers_the_loss_and_raises_p_at_1_both_ways(tmp_path, tiny_model):
    task = synthetic_task(tmp_path / "task")
    summary = train(write_recipe(tmp_path, task, tiny_model), say=lambda message: None)
    run = tmp_path / "runs" / "uwe"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    validations = [entry["validation"]["P@1"] for entry in log if "validation" in entry]
    assert validations[-1] > validations[0] + 0.3, validations
    index = xmr.load_predictor(run / "index")  # the run's predictor folder, as xmr eval opens it
    assert index.describe()["structure"] == "faiss-pooled Flat + late-interaction rerank 10"
    after = evaluate(index, task / "test.jsonl", ks=(1,))["metrics"]["P@1"]
    before = evaluate(build_uwe_index(task / "labels.jsonl", uwe_encoder(tiny_model, normalize_tokens=True,
                                                                          temperature=0.1), None, rerank=10),
                      task / "test.jsonl", ks=(1,))["metrics"]["P@1"]
    assert after > before + 0.3, (before, after)
    # the reverse direction: each label ranks the training queries that carry it
    reverse = xmr.load_index(run / "targets" / "label-query")
    labels = LabelCatalogue.from_file(task / "labels.jsonl")
    train_records = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]
    hits = reverse.predict(labels.texts, k=1).rows[:, 0]
    precision = np.mean([label in train_records[row]["labels"] for label, row in enumerate(hits)])
    assert precision > 0.6, precision
    assert summary["index"] == str(run / "index")
