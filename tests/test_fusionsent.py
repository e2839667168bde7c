"""FusionSent (issue 15): SLERP fusion, scalable pair sampling, the multi-label head and its thresholds, the
classifier-head predictor folder, and the fusionsent task trained through the spine loop on a tiny model."""

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_task

import xmr
import xmr.fusionsent  # noqa: F401  (registers the task and the predictor kind)
from xmr.catalogue import LabelCatalogue
from xmr.datasets import read_instances
from xmr.errors import IndexFolderError, InvalidArgument
from xmr.evaluation import evaluate
from xmr.fusionsent.head import fit_head, label_sets, multi_hot, probabilities, tune_thresholds
from xmr.fusionsent.pairs import TextPairSampler, few_shot_rows, label_pair_count, label_pairs, other_labels
from xmr.fusionsent.predictor import ClassifierHead, head_label_index
from xmr.fusionsent.slerp import slerp, slerp_state_dicts
from xmr.index import build_index_from_embeddings
from xmr.train import RecipeError, load_recipe, train


# ---- SLERP ---------------------------------------------------------------------------------------------------
def test_slerp_of_identical_tensors_is_the_identity():
    tensor = torch.randn(7, 5)
    assert torch.equal(slerp(0.5, tensor, tensor.clone()), tensor)


def test_slerp_endpoints_return_each_body(tiny_model):
    first = xmr.load_encoder(tiny_model).model.state_dict()
    torch.manual_seed(1)
    second = {name: tensor + torch.randn_like(tensor) if tensor.is_floating_point() else tensor
              for name, tensor in first.items()}
    start, end = slerp_state_dicts(first, second, 0.0), slerp_state_dicts(first, second, 1.0)
    for name, tensor in first.items():
        assert torch.allclose(start[name], tensor, atol=1e-6), name
        assert torch.allclose(end[name], second[name], atol=1e-6), name
    middle = slerp_state_dicts(first, second, 0.5)
    moved = [name for name, tensor in first.items() if tensor.is_floating_point() and tensor.numel() > 1]
    assert all(not torch.allclose(middle[name], first[name]) for name in moved)


def test_slerp_follows_the_arc_and_keeps_the_norm_of_orthogonal_tensors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    halfway = slerp(0.5, a, b)
    assert torch.allclose(halfway, torch.tensor([1.0, 1.0]) / 2 ** 0.5)  # lerp would give norm 0.707
    assert torch.allclose(slerp(1 / 3, a, b), torch.tensor([np.cos(np.pi / 6), np.sin(np.pi / 6)]).float())


def test_slerp_refuses_bad_inputs():
    with pytest.raises(InvalidArgument, match="t must be"):
        slerp_state_dicts({"w": torch.ones(2)}, {"w": torch.ones(2)}, 1.5)
    with pytest.raises(InvalidArgument, match="different parameters"):
        slerp_state_dicts({"w": torch.ones(2)}, {"v": torch.ones(2)})


# ---- pairs ---------------------------------------------------------------------------------------------------
def random_positives(n=60, n_labels=8, seed=0):
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_labels, size=rng.integers(1, 4), replace=False)) for _ in range(n)]


def test_pair_counts_are_exact_without_listing_pairs():
    positives = random_positives()
    sampler = TextPairSampler(positives, 8)
    brute = sum(bool(set(a) & set(b)) for a, b in combinations([p.tolist() for p in positives], 2))
    assert sampler.n_positive == brute
    assert sampler.n_negative == 60 * 59 // 2 - brute
    assert sampler.sizes("undersampling") == (min(sampler.n_positive, sampler.n_negative),) * 2
    assert sampler.sizes("oversampling") == (max(sampler.n_positive, sampler.n_negative),) * 2


def test_other_labels_are_distinct_non_positives_by_either_path():
    rng = np.random.default_rng(0)
    assert sorted(other_labels(np.arange(6), 8, 2, rng).tolist()) == [6, 7]  # most labels positive: listed
    drawn = np.concatenate([other_labels(np.array([3, 9]), 20_000, 2, rng) for _ in range(2000)])  # rejection
    assert not np.isin(drawn, [3, 9]).any() and len(np.unique(drawn)) > 3000  # spread, not a fixed few


def test_pair_counts_stay_exact_across_count_blocks(monkeypatch):
    import xmr.fusionsent.pairs as pairs

    positives = random_positives(n=300, n_labels=40, seed=3)  # ~290 distinct label sets
    brute = sum(bool(set(a) & set(b)) for a, b in combinations([p.tolist() for p in positives], 2))
    monkeypatch.setattr(pairs, "COUNT_BLOCK", 7)  # many blocks, the last one partial
    assert TextPairSampler(positives, 40).n_positive == brute


def test_sampled_pairs_obey_their_targets_and_strategies():
    positives = random_positives()
    sampler = TextPairSampler(positives, 8)
    pairs = sampler.sample("oversampling", 400, np.random.default_rng(0))
    assert len(pairs) == 400 and abs(pairs[:, 2].mean() - 0.5) < 0.01  # balanced 1:1
    for a, b, target in pairs:
        assert a != b
        assert bool(np.intersect1d(positives[a], positives[b]).size) == bool(target)
    natural = sampler.sample("unique", 400, np.random.default_rng(0))[:, 2].mean()
    assert abs(natural - sampler.n_positive / (sampler.n_positive + sampler.n_negative)) < 0.01


def test_pair_sampling_scales_to_many_texts():
    rng = np.random.default_rng(0)
    positives = [np.array([rng.integers(50)]) for _ in range(200_000)]  # 2e10 pairs: never listed
    sampler = TextPairSampler(positives, 50)
    assert sampler.n_positive + sampler.n_negative == 200_000 * 199_999 // 2
    assert len(sampler.sample("undersampling", 1000, rng)) == 1000


def test_label_pairs_hold_every_positive_and_as_many_negatives():
    positives = random_positives(n=20)
    pairs = label_pairs(positives, 8, "undersampling", None, np.random.default_rng(0))
    assert len(pairs) == label_pair_count(positives, 8, "undersampling")
    for row, labels in enumerate(positives):
        mine = pairs[pairs[:, 0] == row]
        assert sorted(mine[mine[:, 2] == 1, 1].tolist()) == labels.tolist()
        negatives = mine[mine[:, 2] == 0, 1]
        assert len(negatives) == len(labels) and not np.isin(negatives, labels).any()
    over = label_pairs(positives, 8, "oversampling", None, np.random.default_rng(0))
    assert len(over) == label_pair_count(positives, 8, "oversampling")


def test_few_shot_rows_give_each_label_its_k_examples():
    positives = random_positives(n=200, n_labels=10)
    rows = few_shot_rows(positives, 10, 3, seed=0)
    counts = np.bincount(np.concatenate([positives[row] for row in rows]), minlength=10)
    assert (counts >= 3).all() and len(rows) <= 30
    assert not np.array_equal(rows, few_shot_rows(positives, 10, 3, seed=1))


# ---- head ----------------------------------------------------------------------------------------------------
def test_head_gives_an_item_with_three_gold_labels_three_labels():
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 6)) < 0.35).astype(np.uint8)
    targets[0] = [1, 1, 1, 0, 0, 0]
    features = targets * 2.0 - 1.0 + 0.3 * rng.normal(size=targets.shape)  # each label is one direction
    weights, bias = fit_head(features, targets)
    sets = label_sets(probabilities(features, weights, bias), np.full(6, 0.5))
    assert sets[0].tolist() == [0, 1, 2]
    assert np.mean([len(s) for s in sets]) > 1.5  # an argmax head (the reference's) would give exactly one


def test_constant_labels_get_a_constant_answer():
    features = np.random.default_rng(0).normal(size=(20, 4))
    targets = np.zeros((20, 3), dtype=np.uint8)
    targets[:10, 0] = targets[:, 1] = 1
    weights, bias = fit_head(features, targets)
    probs = probabilities(features, weights, bias)
    assert np.allclose(probs[:, 1], 1, atol=1e-6) and np.allclose(probs[:, 2], 0, atol=1e-6)
    assert not weights[1].any() and not weights[2].any()


def test_thresholds_are_tuned_for_f1():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < 0.3).astype(np.uint8)
    probs = np.where(targets, 0.3, 0.1) + 0.05 * rng.random(targets.shape)  # positives sit at 0.30-0.35
    probs[:, 3] = np.where(targets[:, 3], 0.8, 0.6)  # label 3 has its own scale
    global_ = tune_thresholds(probs, targets, "global", at_least_one=False)
    assert len(set(global_.tolist())) == 1 and 0.15 <= global_[0] <= 0.3
    per_label = tune_thresholds(probs, targets, "per-label", at_least_one=False)
    assert 0.6 < per_label[3] <= 0.8 and (0.15 <= per_label[:3]).all() and (per_label[:3] <= 0.3).all()
    sets = label_sets(probs, per_label, at_least_one=False)
    assert all(sorted(s.tolist()) == np.flatnonzero(t).tolist() for s, t in zip(sets, targets, strict=True))


# ---- predictor folder ----------------------------------------------------------------------------------------
def tiny_head(tiny_encoder, tmp_path):
    folder = synthetic_task(tmp_path / "data", n_labels=6, n_train=80, n_test=20)
    catalogue = LabelCatalogue.from_file(folder / "labels.jsonl")
    train_set = read_instances(folder / "train.jsonl")
    features = tiny_encoder.encode_queries(train_set.texts)
    targets = multi_hot([np.array(labels) for labels in train_set.labels], 6)
    weights, bias = fit_head(features, targets, c=100.0)
    return ClassifierHead(catalogue, tiny_encoder, weights, bias, np.full(6, 0.5, dtype=np.float32)), folder


def test_classifier_head_folder_round_trip_and_tamper_check(tiny_encoder, tmp_path):
    head, data = tiny_head(tiny_encoder, tmp_path)
    head.save(tmp_path / "head")
    opened = xmr.load_predictor(tmp_path / "head")
    assert opened.kind == "classifier-head" and len(opened) == 6
    texts = read_instances(data / "test.jsonl").texts
    before, after = head.predict(texts, k=3), opened.predict(texts, k=3)
    assert np.array_equal(before.rows, after.rows) and np.allclose(before.scores, after.scores, atol=1e-5)
    assert [s.tolist() for s in before.sets] == [s.tolist() for s in after.sets]
    report = evaluate(opened, data / "test.jsonl", ks=(1, 3), train=data / "train.jsonl")
    assert {"micro_f1", "macro_f1"} <= set(report["set_metrics"]) and "PSP@1" in report["metrics"]
    weights = next((tmp_path / "head" / "encoder").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IndexFolderError, match="checksum mismatch"):
        xmr.load_predictor(tmp_path / "head")


def test_head_rows_serve_as_label_vectors(tiny_encoder, tmp_path):
    head, data = tiny_head(tiny_encoder, tmp_path)
    index = head_label_index(head)
    queries = tiny_encoder.encode_queries(read_instances(data / "test.jsonl").texts)
    hits = index.search_embeddings(queries, k=1)
    assert np.array_equal(hits.rows[:, 0], np.argmax(queries @ head.weights.T, axis=1))


# ---- the task ------------------------------------------------------------------------------------------------
def recipe_file(tmp_path: Path, model: str, **fusionsent) -> Path:
    data = synthetic_task(tmp_path / "data", n_labels=8, n_train=160, n_test=40)
    values = {
        "name": "fs", "method": "fusionsent", "seed": 0, "output": str(tmp_path / "runs"),
        "data": {"train": str(data / "train.jsonl"), "labels": str(data / "labels.jsonl"),
                 "validation": str(data / "validation.jsonl")},
        "encoder": model,
        "fusionsent": {"shots": 6, "max_pairs": 256, "batch_size": 16, "branch_predictors": True,
                       "head": {"c": [10.0, 100.0]}, **fusionsent},
        "optimizer": {"lr": 1e-3, "warmup": 0.0, "clip_norm": None},
        "schedule": {"max_steps": 32},
        "checkpoint": {"every": 100, "keep": 1},
    }
    path = tmp_path / "fs.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def zero_shot_p1(encoder, data: Path) -> float:
    catalogue = LabelCatalogue.from_file(data / "labels.jsonl")
    index = build_index_from_embeddings(catalogue, encoder.encode_labels(catalogue.items()), None, encoder=encoder)
    return evaluate(index, data / "train.jsonl", ks=(1,))["metrics"]["P@1"]


def pair_margin(encoder, data: Path) -> float:
    """Mean cosine of training texts that share a label minus that of texts that share none (what body 1 learns)."""
    instances = read_instances(data / "train.jsonl")
    vectors = encoder.encode_queries(instances.texts)
    shared = np.array([[bool(set(a) & set(b)) for b in instances.labels] for a in instances.labels])
    cosines = vectors @ vectors.T
    off_diagonal = ~np.eye(len(vectors), dtype=bool)
    return float(cosines[shared & off_diagonal].mean() - cosines[~shared].mean())


def test_fusionsent_trains_both_branches_fuses_and_writes_a_predictor(tiny_model, tmp_path):
    summary = train(load_recipe(recipe_file(tmp_path, tiny_model)), say=lambda message: None)
    run = tmp_path / "runs" / "fs"
    losses = [entry["loss"] for entry in map(json.loads, (run / "log.jsonl").read_text().splitlines())
              if "loss" in entry]
    assert len(losses) == 32 and np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6])
    data = tmp_path / "data"
    label_body = xmr.load_encoder(run / "bodies" / "best" / "label")
    # the label branch learns the label texts: 0.23 -> 0.42 on this toy set with the rejection-sampled negatives
    assert zero_shot_p1(label_body, data) > zero_shot_p1(xmr.load_encoder(tiny_model), data) + 0.15
    setfit = xmr.load_encoder(run / "bodies" / "best" / "setfit")
    assert pair_margin(setfit, data) > pair_margin(xmr.load_encoder(tiny_model), data) + 0.1
    fused = xmr.load_encoder(summary["encoder"])  # an ordinary encoder folder
    expected = slerp_state_dicts(setfit.model.state_dict(), label_body.model.state_dict(), 0.5)
    assert all(torch.allclose(fused.model.state_dict()[name], tensor, atol=1e-6) for name, tensor in expected.items())
    reports = {name: evaluate(xmr.load_predictor(path), data / "test.jsonl", ks=(1, 3))
               for name, path in [("fused", summary["predictor"]), *summary["branches"].items()]}
    assert all(report["set_metrics"]["micro_f1"] > 0.3 for report in reports.values())
    assert reports["fused"]["predictor"]["head"]["thresholds_tuned_on"] == 20
    assert summary["train_texts"] < 160  # the few-shot sample, not the whole split


def test_the_label_branch_alone_trains_one_body_and_writes_an_encoder_without_a_head(tiny_model, tmp_path):
    summary = train(load_recipe(recipe_file(tmp_path, tiny_model, branches="label", head=None)),
                    say=lambda message: None)
    run, data = tmp_path / "runs" / "fs", tmp_path / "data"
    assert sorted(path.name for path in (run / "bodies" / "best").iterdir()) == ["label"]
    assert "predictor" not in summary and not (run / "predictor").exists() and "branches" not in summary
    body = xmr.load_encoder(summary["encoder"])  # the label body itself, not a fusion
    label_body = xmr.load_encoder(run / "bodies" / "best" / "label")
    assert all(torch.equal(body.model.state_dict()[name], tensor)
               for name, tensor in label_body.model.state_dict().items())
    assert zero_shot_p1(body, data) > zero_shot_p1(xmr.load_encoder(tiny_model), data) + 0.2


def test_fusionsent_recipe_problems_are_named(tiny_model, tmp_path):
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe_file(tmp_path, tiny_model, t=2.0, shots=0, pair_sampling="all"))
    message = str(error.value)
    assert "fusionsent.t" in message and "fusionsent.shots" in message and "fusionsent.pair_sampling" in message


def test_bundled_recipe_loads():
    recipe = load_recipe("fusionsent-reuters", {"fusionsent.shots": 8})
    assert recipe.method == "fusionsent" and recipe.section("fusionsent").shots == 8


def test_validation_during_training_picks_the_best_bodies(tiny_model, tmp_path):
    path = recipe_file(tmp_path, tiny_model, branch_predictors=False)
    values = yaml.safe_load(path.read_text())
    values["schedule"]["max_steps"], values["evaluation"] = 16, {"every": 8, "ks": [1], "metric": "P@1",
                                                                  "before": True}
    path.write_text(yaml.safe_dump(values))
    summary = train(load_recipe(path), say=lambda message: None)
    validations = [entry for entry in map(json.loads, (tmp_path / "runs" / "fs" / "log.jsonl").read_text()
                                          .splitlines()) if "validation" in entry]
    assert [entry["step"] for entry in validations] == [0, 8, 16]
    assert {"micro_f1", "P@1"} <= set(validations[-1]["validation"])
    best = max(validations, key=lambda entry: entry["validation"]["P@1"])
    assert summary["best"]["step"] == best["step"] and "branches" not in summary


def test_a_head_whose_encoder_asks_for_remote_code_opens_only_when_the_caller_allows_it(tiny_model, tmp_path):
    encoder = xmr.load_encoder({"type": "sentence-transformers", "model": tiny_model, "trust_remote_code": True})
    head, _ = tiny_head(encoder, tmp_path)
    head.save(tmp_path / "head")
    with pytest.raises(IndexFolderError, match="trust_remote_code"):
        xmr.load_predictor(tmp_path / "head")
    assert xmr.load_predictor(tmp_path / "head", trust_remote_code=True).kind == "classifier-head"
