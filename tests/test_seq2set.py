"""The Seq2Set decoder path (issue 17): OTSeq2Set's loss (Hungarian matching + IPOT), greedy set decoding,
shortlists, the ``seq2set`` task through ``xmr train`` and the ``seq2set`` predictor folder through ``xmr eval``."""

import json
import shutil

import numpy as np
import ot
import pytest
import torch
import yaml
from conftest import synthetic_task

import xmr
from xmr import cli
from xmr.errors import IndexFolderError
from xmr.evaluation import evaluate
from xmr.seq2set.decoding import generated_sets
from xmr.seq2set.losses import OTSeq2SetLoss, TeacherForcingLoss, hungarian_targets
from xmr.seq2set.ot import cosine_cost, ipot_plan
from xmr.seq2set.predictor import SHORTLIST, load_seq2set
from xmr.seq2set.shortlist import with_gold
from xmr.seq2set.tokens import encode_texts
from xmr.train import RecipeError, load_recipe, train


# ---- optimal transport ---------------------------------------------------------------------------------------------
def test_ipot_plan_has_uniform_marginals_and_approaches_the_exact_ot_cost():
    torch.manual_seed(0)
    source, target = torch.randn(3, 7, 16), torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    cost = cosine_cost(source, target)
    plan = ipot_plan(cost, mask)  # the paper's beta 1, 50 iterations
    for row, n in enumerate(mask.sum(1).tolist()):
        # IPOT's last scaling makes the gold-side marginal exact; the predicted side converges to uniform
        assert torch.allclose(plan[row, :, :n].sum(0), torch.full((n,), 1 / n), atol=1e-6)
        assert torch.allclose(plan[row].sum(1), torch.full((7,), 1 / 7), atol=5e-4)
        assert float(plan[row, :, n:].abs().sum()) == 0.0  # padded golds receive no mass
        c = cost[row, :, :n].double().numpy()
        exact = ot.emd2(np.full(7, 1 / 7), np.full(n, 1 / n), c)
        got = float((plan[row, :, :n] * cost[row, :, :n]).sum())
        assert got >= exact - 1e-6 and got - exact < 5e-3  # feasible, so never below the optimum; and close to it
        few = ipot_plan(cost[row:row + 1, :, :n], iterations=2)
        assert float((few[0] * cost[row, :, :n]).sum()) - exact >= got - exact - 1e-9  # more iterations: closer


# ---- the matching loss -----------------------------------------------------------------------------------------------
def random_batch(seed=0, batch=3, steps=4, columns=9, dim=8):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, steps, columns, generator=generator, requires_grad=True)
    embeddings = torch.randn(columns, dim, generator=generator)
    gold = torch.tensor([[0, 3, 5], [2, -1, -1], [7, 1, -1]])
    return logits, embeddings, gold


@pytest.mark.parametrize("lambda_ot", [0.0, 8.0])
def test_otseq2set_loss_is_invariant_to_the_order_of_the_gold_labels(lambda_ot):
    logits, embeddings, gold = random_batch()
    loss = OTSeq2SetLoss(lambda_ot=lambda_ot)
    base = loss(torch.log_softmax(logits, -1), gold, embeddings)
    shuffled = torch.tensor([[5, 0, 3], [2, -1, -1], [1, 7, -1]])
    assert torch.allclose(loss(torch.log_softmax(logits, -1), shuffled, embeddings), base, atol=1e-6)
    per_query = embeddings.expand(3, -1, -1)  # shortlisted layout: one embedding table per query
    assert torch.allclose(loss(torch.log_softmax(logits, -1), shuffled, per_query), base, atol=1e-6)
    other = torch.tensor([[4, 3, 5], [2, -1, -1], [7, 1, -1]])
    assert not torch.allclose(loss(torch.log_softmax(logits, -1), other, embeddings), base)  # the golds matter
    # teacher forcing (MLC2Seq) is order dependent: the same golds in another order give another loss
    targets = torch.tensor([[0, 3, 5, 8]] * 3)
    reordered = torch.tensor([[5, 0, 3, 8]] * 3)
    forced = TeacherForcingLoss()
    assert not torch.allclose(forced(torch.log_softmax(logits, -1), targets),
                              forced(torch.log_softmax(logits, -1), reordered))


def test_hungarian_matching_gives_each_gold_its_most_probable_step_and_the_rest_the_empty_token():
    log_probs = torch.full((1, 4, 6), -10.0)
    log_probs[0, 0, 4] = log_probs[0, 2, 1] = -0.1  # step 0 predicts label 4, step 2 predicts label 1
    targets = hungarian_targets(log_probs, torch.tensor([[1, 4]]))
    assert targets.tolist() == [[4, 5, 1, 5]]  # column 5 (last) is the empty token


def test_the_empty_token_weighs_less_than_a_label_in_the_nll():
    log_probs = torch.log_softmax(torch.zeros(1, 3, 4), -1)  # uniform: every cell has the same NLL
    gold = torch.tensor([[0]])
    light = OTSeq2SetLoss(empty_weight=0.2, lambda_ot=0)(log_probs, gold, torch.eye(4))
    assert torch.allclose(light, torch.tensor(np.log(4.0), dtype=torch.float32))  # weighted mean of equal NLLs
    log_probs = torch.log_softmax(torch.tensor([[[3.0, 0, 0, 0], [0, 0, 0, -3.0], [0, 0, 0, -3.0]]]), -1)
    heavy = OTSeq2SetLoss(empty_weight=1.0, lambda_ot=0)(log_probs, gold, torch.eye(4))
    light = OTSeq2SetLoss(empty_weight=0.2, lambda_ot=0)(log_probs, gold, torch.eye(4))
    assert light < heavy  # the badly predicted empty steps count less


# ---- decoding and shortlists -----------------------------------------------------------------------------------
def test_greedy_decoding_returns_a_set_without_empty_tokens_or_duplicates():
    empty = 9
    tokens = np.array([[3, 9, 3, 5], [9, 9, 9, 9], [1, 2, 9, 4]])
    assert [s.tolist() for s in generated_sets(tokens, empty, stop_at_end=False)] == [[3, 5], [], [1, 2, 4]]
    assert [s.tolist() for s in generated_sets(tokens, empty, stop_at_end=True)] == [[3], [], [1, 2]]  # MLC2Seq


def test_training_shortlists_hold_every_gold_and_keep_the_index_order():
    candidates = np.array([[5, 6, 7, 8], [1, 2, 3, 4]])
    out, recall = with_gold(candidates, [np.array([6, 9]), np.array([1, 2])])
    assert out.tolist() == [[5, 6, 7, 9], [1, 2, 3, 4]]
    assert recall == pytest.approx(3 / 4)


def test_token_states_are_cached_once_and_match_a_fresh_encoding(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path))
    texts = ["python data engineer", "cook food in a kitchen today"]
    first = encode_texts(tiny_encoder, texts, cache=True)
    assert len(list((tmp_path / "seq2set-token-states").iterdir())) == 1
    again = encode_texts(tiny_encoder, texts, cache=True)
    fresh = encode_texts(tiny_encoder, texts, cache=False)
    np.testing.assert_array_equal(again.states, first.states)
    np.testing.assert_allclose(fresh.pooled, tiny_encoder.encode_queries(texts), atol=1e-5)
    assert first.mask.sum(1).tolist() == [int(n) for n in fresh.mask.sum(1)] and first.mask[0].sum() < 10


# ---- the task and the predictor folder -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    return synthetic_task(tmp_path_factory.mktemp("seq2set-data"))


def run_recipe(folder, tiny_model, task_data, name, **seq2set):
    recipe = {"name": name, "method": "seq2set", "output": str(folder / "runs"), "seed": 0,
              "data": {"train": str(task_data / "train.jsonl"), "labels": str(task_data / "labels.jsonl")},
              "encoder": {"type": "sentence-transformers", "model": tiny_model, "device": "cpu"},
              "seq2set": {"hidden": 32, "batch_size": 16, "lr": 3e-3, "cache_token_states": False, **seq2set},
              "checkpoint": {"every": 10000}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    summary = train(folder / f"{name}.yaml", say=lambda message: None)
    losses = [json.loads(line)["loss"] for line in (folder / "runs" / name / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    return summary, losses


def test_otseq2set_learns_the_label_sets_and_its_folder_scores_through_xmr_eval(tmp_path, tiny_model, task_data,
                                                                                capsys):
    untrained, _ = run_recipe(tmp_path, tiny_model, task_data, "untrained", epochs=0.05)
    summary, losses = run_recipe(tmp_path, tiny_model, task_data, "ot", epochs=12)
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])
    predictor = xmr.load_predictor(summary["predictor"])
    assert predictor.kind == "seq2set" and summary["decoder_steps"] == 2  # the largest gold set of the data
    test = task_data / "test.jsonl"
    trained, before = evaluate(predictor, test, ks=[1, 3]), evaluate(xmr.load_predictor(untrained["predictor"]),
                                                                     test, ks=[1, 3])
    assert trained["metrics"]["P@1"] > before["metrics"]["P@1"] + 0.2
    assert trained["set_metrics"]["micro_f1"] > before["set_metrics"]["micro_f1"] + 0.2
    result = predictor.predict(["python data", "cook food kitchen"], k=3)
    assert all(len(set(found.tolist())) == len(found) <= 2 for found in result.sets)  # a set of at most T labels
    assert cli.main(["eval", summary["predictor"], "--test", str(test), "-k", "1", "3"]) == 0
    assert "micro" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("model,source,epochs", [("mlc2seq", "frozen", 6), ("bce", "frozen", 6),
                                                 ("otseq2set", "bigru", 12)])
def test_baselines_and_the_bigru_encoder_train_in_the_same_harness(tmp_path, tiny_model, task_data, model, source,
                                                                   epochs):
    summary, losses = run_recipe(tmp_path, tiny_model, task_data, model, model=model, source=source, epochs=epochs)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    report = evaluate(xmr.load_predictor(summary["predictor"]), task_data / "test.jsonl", ks=[1])
    assert report["set_metrics"] is not None and report["metrics"]["P@1"] > 1 / 24


def test_a_shortlisted_decoder_scores_only_its_shortlist_and_binds_its_index(tmp_path, tiny_model, task_data):
    summary, losses = run_recipe(tmp_path, tiny_model, task_data, "short", shortlist=6, centroid_weight=1.0, epochs=4)
    assert summary["shortlist"] == 6 and 0 < summary["shortlist_gold_recall"] <= 1
    predictor = load_seq2set(summary["predictor"])
    texts = ["python data engineer", "truck drive forklift"]
    result = predictor.predict(texts, k=10)
    allowed = predictor.index.predict(texts, k=6).rows
    for row, found, short in zip(result.rows, result.sets, allowed, strict=True):
        assert set(row[row >= 0]) <= set(short) and set(found) <= set(short)
        assert (row >= 0).sum() == 6  # the ranked list ends with the shortlist
    other = tmp_path / "other"
    shutil.copytree(summary["predictor"], other)
    index = predictor.index
    index.catalogue.texts[0] = "renamed"  # another index of the same size
    shutil.rmtree(other / SHORTLIST)
    index.save(other / SHORTLIST)
    with pytest.raises(IndexFolderError, match="not the shortlist index"):
        load_seq2set(other)


def test_recipe_problems_are_reported_together(tmp_path, task_data):
    recipe = {"name": "bad", "method": "seq2set", "data": {"train": "t.jsonl", "labels": "l.jsonl"},
              "seq2set": {"ipot_beta": 0, "shortlist_index": "somewhere", "threshold": 1.5}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError) as error:
        load_recipe(tmp_path / "bad.yaml")
    for field in ("seq2set.ipot_beta", "seq2set.shortlist_index", "seq2set.threshold"):
        assert field in str(error.value)
    assert list(load_recipe("seq2set-reuters").tasks) == ["seq2set"]
