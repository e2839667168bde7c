"""The training stack on a task a tiny model must learn: recipes, batches, mining, runs, resume, LoRA, fusion."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_task

import xmr
from xmr.catalogue import LabelCatalogue
from xmr.datasets import read_instances
from xmr.evaluation import evaluate
from xmr.train import RecipeError, load_recipe, train
from xmr.train.batches import TrainingPairs, clustered_plan, make_batch, random_plan
from xmr.train.checkpoint import checkpoint_folder, prune_checkpoints
from xmr.train.mining import mine_hard_negatives
from xmr.train.tasks import TASKS, LoopSettings, ParameterGroup, Task


@pytest.fixture(scope="session")
def task(tmp_path_factory) -> Path:
    return synthetic_task(tmp_path_factory.mktemp("task"))


def write_recipe(folder: Path, task: Path, encoder, **sections) -> Path:
    recipe = {
        "name": "run",
        "output": str(folder / "runs"),
        "data": {"train": str(task / "train.jsonl"), "labels": str(task / "labels.jsonl"),
                 "validation": str(task / "validation.jsonl")},
        "encoder": encoder,
        "batching": {"batch_size": 16},
        "optimizer": {"lr": 1e-3},
        "schedule": {"epochs": 4},
        "evaluation": {"every": 30},
        "checkpoint": {"every": 10},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def p_at_1_on_test(index_encoder, task: Path) -> float:
    labels = LabelCatalogue.from_file(task / "labels.jsonl")
    index = xmr.build_index(labels, index_encoder, None) if not isinstance(index_encoder, xmr.LabelIndex) \
        else index_encoder
    return evaluate(index, task / "test.jsonl", ks=(1,))["metrics"]["P@1"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, task, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    summary = train(write_recipe(folder, task, {"type": "sentence-transformers", "model": tiny_model},
                                 index={"centroid_weight": 1.0}), say=lambda message: None)
    assert summary["steps"] == 60
    return folder / "runs" / "run"


# ---- recipes ------------------------------------------------------------------------------------------------------
def test_recipe_errors_name_file_and_field(tmp_path, task):
    path = write_recipe(tmp_path, task, "x", loss={"name": "ohnm-triplet", "temprature": 0.1})
    with pytest.raises(RecipeError, match=r"recipe.yaml: loss.temprature: unknown key"):
        load_recipe(path)
    path = write_recipe(tmp_path, task, "x", batching={"batch_size": "big"})
    with pytest.raises(RecipeError, match=r"batching.batch_size: expected int, got 'big'"):
        load_recipe(path)
    path.write_text("name: x\ndata: {train: a}\n")
    with pytest.raises(RecipeError, match=r"data.labels: required"):
        load_recipe(path)
    path.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: line \d+ bad YAML"):
        load_recipe(path)
    path = write_recipe(tmp_path, task, "x", optimizer={"precision": "fp8"})
    with pytest.raises(RecipeError, match="optimizer.precision"):
        load_recipe(path)
    assert load_recipe(write_recipe(tmp_path, task, "x"), {"schedule.max_steps": 3}).section("schedule").max_steps == 3


def test_every_problem_of_a_recipe_is_named_at_load(tmp_path, task):
    """A bad label_vectors.combine used to surface only after the whole encoder stage had trained."""
    path = write_recipe(tmp_path, task, "x", batching={"batch_size": 0}, index={}, checkpoint={"keep": 0},
                        label_vectors={"combine": "concat", "parts": ["text", "centroid"], "epochs": -1})
    with pytest.raises(RecipeError) as refused:
        load_recipe(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: 4 problems: ")
    assert "label_vectors.combine: 'concat' is not one of sum, gated, transformer" in message
    assert "label_vectors.epochs: must be at least 0" in message  # checked although combine is bad
    assert "batching.batch_size: must be at least 1" in message
    assert "checkpoint.keep: must be at least 1" in message
    path = write_recipe(tmp_path, task, "x", label_vectors={"combine": "gated"}, optimizer={"precision": "fp8"})
    with pytest.raises(RecipeError, match=r"recipe.yaml: 2 problems: optimizer.precision: 'fp8' is not one of auto, "
                                          r"fp32, bf16, fp16; label_vectors: needs an index section"):
        load_recipe(path)


def test_an_unknown_method_is_refused_naming_the_known_ones(tmp_path, task):
    path = write_recipe(tmp_path, task, "x", method="alchemy")
    with pytest.raises(RecipeError, match=r"recipe.yaml: method: 'alchemy' is not a known method \(known: "
                                          r"dual-encoder, .*label-vectors"):
        load_recipe(path)
    assert load_recipe(write_recipe(tmp_path, task, "x")).method == "dual-encoder"  # the default


def test_a_bundled_recipe_loads_by_name_from_any_directory(tmp_path, monkeypatch):
    source_tree = Path(__file__).resolve().parent.parent / "training"
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("reuters-minilm")
    assert recipe.name == "reuters-minilm" and recipe.section("data").train.startswith("../shared/data/")
    assert (source_tree / "reuters-minilm.yaml").is_symlink()
    assert load_recipe(source_tree / "reuters-minilm.yaml").to_dict() == recipe.to_dict()
    assert list(load_recipe("reuters-labelvectors").tasks) == ["dual-encoder", "label-vectors"]
    assert list(load_recipe("esco-labelvectors").tasks) == ["label-vectors"]
    with pytest.raises(RecipeError, match=r"reuters-minlm: no such recipe file, and not a bundled recipe "
                                          r"\(esco-labelvectors, esco-minilm, .*reuters-labelvectors, reuters-minilm"):
        load_recipe("reuters-minlm")


def test_prune_keeps_exactly_the_newest_checkpoints(tmp_path):
    for step in (5, 10, 15, 20, 100):
        checkpoint_folder(tmp_path, step).mkdir()
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-0000020", "step-0000100"]
    prune_checkpoints(tmp_path, keep=1)
    assert [path.name for path in tmp_path.iterdir()] == ["step-0000100"]
    prune_checkpoints(tmp_path, keep=0)
    assert not list(tmp_path.iterdir())


# ---- a method added from outside xmr: a toy task through the loop ---------------------------------------------------
@dataclass
class ToySpec:
    lr: float = 0.05
    steps: int = 100


@dataclass
class ToySections:
    toy: ToySpec = field(default_factory=ToySpec)


class LeastSquares(Task):
    """Fit ``w`` in ``x @ w = y`` on 64 fixed points in batches of 8: its own parameter group, rate and loss."""

    sections = ToySections
    truth = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def __init__(self, context):
        super().__init__(context)
        self.x = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
        self.weight = torch.nn.Parameter(torch.zeros(4, 1))

    def settings(self):
        return LoopSettings(batches_per_epoch=8, max_steps=self.context.sections.toy.steps, lr_schedule="constant")

    def parameter_groups(self):
        return [ParameterGroup("toy-weights", [self.weight], self.context.sections.toy.lr)]

    def begin_epoch(self, epoch):
        self.plan = random_plan(64, 8, self.context.recipe.seed, epoch)
        return len(self.plan)

    def forward(self, position, rng):
        rows = self.plan[position]
        return self.x[rows] @ self.weight, self.x[rows] @ self.truth

    def loss(self, output):
        prediction, target = output
        return ((prediction - target) ** 2).mean()

    def save(self, which):
        (self.context.run / f"toy-{which}.json").write_text(json.dumps(self.weight.detach().flatten().tolist()))

    def finish(self, best):
        return {"weight": self.weight.detach().flatten().tolist()}


def test_a_task_registered_outside_xmr_trains_through_the_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "least-squares", LeastSquares)
    recipe = {"name": "toy", "method": "least-squares", "output": str(tmp_path / "runs"), "toy": {"lr": 0.1},
              "checkpoint": {"every": 25, "keep": 1}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match=r"toy.stpes: unknown key \(known: lr, steps\)"):
        load_recipe(tmp_path / "toy.yaml", {"toy.stpes": 3})
    summary = train(tmp_path / "toy.yaml", say=lambda message: None)
    run = tmp_path / "runs/toy"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 100 and len(log) == 100 and {entry["task"] for entry in log} == {"least-squares"}
    assert all(entry["lr"] == {"toy-weights": 0.1} for entry in log)  # its own group at its own constant rate
    losses = [entry["loss"] for entry in log]
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])
    assert np.allclose(summary["weight"], LeastSquares.truth.flatten(), atol=0.3)
    assert json.loads((run / "toy-best.json").read_text()) == summary["weight"]  # no validation: last is best
    from safetensors.numpy import load_file

    (kept,) = (run / "checkpoints/least-squares").iterdir()
    assert kept.name == "step-0000100" and set(load_file(kept / "weights.safetensors")) == {"toy-weights.0"}


class SlowLeastSquares(LeastSquares):
    """The toy task at >= 10 ms a step, 100 steps on a linear schedule, capped at 0.6 s of steps."""

    def settings(self):
        return LoopSettings(batches_per_epoch=8, max_steps=100, warmup=0.1, max_seconds=0.6)

    def forward(self, position, rng):
        time.sleep(0.01)
        return super().forward(position, rng)


def test_max_seconds_caps_the_steps_and_stretches_the_schedule_to_them(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "least-squares", SlowLeastSquares)
    recipe = {"name": "toy", "method": "least-squares", "output": str(tmp_path / "runs"), "toy": {"lr": 0.1},
              "checkpoint": {"every": 1000, "keep": 1}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(recipe))
    summary = train(tmp_path / "toy.yaml", say=lambda message: None)
    budget = summary["time_budget"]
    assert budget["steps_of_the_schedule"] == 100 and budget["measured_step_seconds"] >= 0.01
    assert 5 <= summary["steps"] == budget["steps_allowed"] <= 60
    log = [json.loads(line) for line in (tmp_path / "runs/toy/log.jsonl").read_text().splitlines()]
    rates = [entry["lr"]["toy-weights"] for entry in log]
    assert len(rates) == summary["steps"] and rates[-1] == 0.0  # the linear decay ends at the capped count
    decay = rates[5:]
    assert rates[:2] == sorted(rates[:2]) and decay == sorted(decay, reverse=True) and decay[0] > decay[-1]


class PausingLeastSquares(SlowLeastSquares):
    """The slow toy task with 0.3 s of between-step work (like a mining refresh) before step 6."""

    def before_step(self, step, position, steps_left):
        if step == 6:
            time.sleep(0.3)


def budgeted_steps(tmp_path, monkeypatch, pausing_task):
    """Steps of the slow toy task and of ``pausing_task`` under the same 0.6 s budget, and the latter's timing."""
    recipe = {"name": "toy", "method": "least-squares", "toy": {"lr": 0.1}, "checkpoint": {"every": 1000, "keep": 1}}
    steps = {}
    for name, task in (("plain", SlowLeastSquares), ("pausing", pausing_task)):
        monkeypatch.setitem(TASKS, "least-squares", task)
        (tmp_path / "toy.yaml").write_text(yaml.safe_dump({**recipe, "output": str(tmp_path / name)}))
        summary = train(tmp_path / "toy.yaml", say=lambda message: None)
        steps[name] = (summary["steps"], summary["time_budget"])
    (plain, _), (pausing, budget) = steps["plain"], steps["pausing"]
    assert budget["steps_allowed"] == pausing
    return plain, pausing, budget


def test_between_step_work_is_paid_from_max_seconds(tmp_path, monkeypatch):
    plain, pausing, budget = budgeted_steps(tmp_path, monkeypatch, PausingLeastSquares)
    assert budget["between_step_seconds"] >= 0.3
    # 0.3 s of a 0.6 s budget is half of the steps; the measured step times vary a little between the runs
    assert pausing <= 0.8 * plain, (plain, pausing)


class ValidatingLeastSquares(SlowLeastSquares):
    """The slow toy task validated before the first step and after the last, each validation taking 0.16 s."""

    def settings(self):
        return replace(super().settings(), validate_before=True, validate_at_end=True)

    def validate(self):
        time.sleep(0.16)
        return {"P@1": float(-self.loss(self.forward(0, None)))}


def test_validations_are_paid_from_max_seconds(tmp_path, monkeypatch):
    plain, validating, budget = budgeted_steps(tmp_path, monkeypatch, ValidatingLeastSquares)
    # the validation before and the one reserved for the end: 0.32 s of the 0.6 s budget
    assert budget["between_step_seconds"] >= 0.32
    assert validating <= 0.75 * plain, (plain, validating)


# ---- batches, clustering, mining ------------------------------------------------------------------------------------
def pairs_of(task: Path) -> TrainingPairs:
    return TrainingPairs.from_instances(read_instances(task / "train.jsonl"),
                                        LabelCatalogue.from_file(task / "labels.jsonl"))


def test_batch_columns_and_positive_cells(task):
    pairs = pairs_of(task)
    rows = np.arange(8)
    rng = np.random.default_rng(0)
    batch = make_batch(pairs, rows, rng, one_positive=False, all_labels=False)
    assert set(batch.columns) == set(np.concatenate([pairs.positives[row] for row in rows]))
    for position, row in enumerate(rows):
        assert set(batch.columns[batch.positives[position]]) == set(pairs.positives[row])
        assert batch.positives[position, batch.anchors[position]]
    one = make_batch(pairs, rows, rng, one_positive=True, all_labels=False)
    assert len(one.columns) <= len(rows) and one.positives[np.arange(8), one.anchors].all()
    every = make_batch(pairs, rows, rng, one_positive=False, all_labels=True)
    assert len(every.columns) == len(pairs.labels)


def test_mined_hard_negatives_are_top_ranked_non_positives(task, tiny_encoder):
    pairs = pairs_of(task)
    table = mine_hard_negatives(tiny_encoder, pairs, depth=5)
    assert table.shape == (len(pairs), 5)
    label_vectors = tiny_encoder.encode_labels(pairs.labels.items())
    query_vectors = tiny_encoder.encode_queries(pairs.queries[:3])
    for row in range(3):
        ranked = np.argsort(-(label_vectors @ query_vectors[row]), kind="stable")
        expected = [label for label in ranked if label not in pairs.positives[row]][:5]
        assert set(table[row]) == set(expected)
    batch = make_batch(pairs, np.arange(4), np.random.default_rng(0), one_positive=False, all_labels=False,
                       hard_negatives=table, negatives_per_query=2)
    assert set(np.concatenate([table[row] for row in range(4)])) & set(batch.columns)
    assert not any(batch.positives[position, np.isin(batch.columns, table[row])].any() for position, row in
                   enumerate(range(4)))


def test_mining_only_the_given_rows_leaves_the_others_unmined(task, tiny_encoder):
    pairs = pairs_of(task)
    full = mine_hard_negatives(tiny_encoder, pairs, depth=5)
    rows = np.array([7, 3, 3, 100])
    given = tiny_encoder.encode_labels(pairs.labels.items())
    window = mine_hard_negatives(tiny_encoder, pairs, depth=5, rows=rows, label_vectors=given)
    assert np.array_equal(window[[3, 7, 100]], full[[3, 7, 100]])
    others = np.setdiff1d(np.arange(len(pairs)), rows)
    assert (window[others] == -1).all() and (full[others] >= 0).any()


def test_refreshes_mine_the_coming_steps_and_every_new_epoch(tmp_path, task, tiny_model, monkeypatch):
    """240 queries in batches of 16: 15 steps an epoch. Refreshes every 7 steps mine the queries up to the next
    refresh; the second epoch (from step 15) gets its own refresh at step 16; the first reads the vector cache; the
    one due at step 28 would serve 2 of the 30 steps (under half of 7) and is skipped."""
    from xmr.encoders import vector_cache

    cached = []
    real = vector_cache.encode_cached
    monkeypatch.setattr(vector_cache, "encode_cached", lambda *args, **kw: cached.append(args[2]) or real(*args, **kw))
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path, task, {"type": "sentence-transformers", "model": tiny_model},
                          negatives={"mined": {"per_query": 1, "depth": 5, "refresh_every": 7, "cached_first": True}},
                          schedule={"epochs": 2}, evaluation={"every": 100})
    messages = []
    train(recipe, say=messages.append)
    import re

    refreshes = [tuple(map(int, found.groups())) for message in messages
                 if (found := re.match(r"step (\d+): mined 5 hard negatives for (\d+) queries", message))]
    assert refreshes == [(0, 112), (7, 112), (14, 16), (16, 80), (21, 112)]
    assert cached == ["label"]


def test_clustered_plan_batches_similar_queries():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    members = np.repeat(np.arange(8), 16)
    vectors = centres[members] + 0.05 * rng.normal(size=(128, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    plan = clustered_plan(vectors.astype(np.float32), cluster_size=16, batch_size=16, seed=0, epoch=1)
    assert sorted(np.concatenate(plan)) == list(range(128))
    purity = np.mean([np.bincount(members[batch]).max() / len(batch) for batch in plan])
    assert purity > 0.8  # random batches of 16 over 8 groups would be ~0.25


def test_inverse_propensity_sampling_prefers_rare_positives():
    from xmr.datasets import Instances

    labels = LabelCatalogue.from_records([{"id": 0, "text": "common"}, {"id": 1, "text": "rare"}])
    rows = [[0]] * 8000 + [[0, 1]] * 2000
    pairs = TrainingPairs.from_instances(Instances(list(range(10000)), ["q"] * 10000, rows), labels)
    weights = pairs.label_weights(0.6, 2.6)
    assert weights[1] > weights[0]
    both = np.arange(8000, 10000)
    uniform = make_batch(pairs, both, np.random.default_rng(0), one_positive=True, all_labels=False)
    weighted = make_batch(pairs, both, np.random.default_rng(0), one_positive=True, all_labels=False,
                          positive_weights=weights)
    assert (uniform.columns[uniform.anchors] == 1).mean() == pytest.approx(0.5, abs=0.03)
    expected = weights[1] / (weights[0] + weights[1])
    assert (weighted.columns[weighted.anchors] == 1).mean() == pytest.approx(expected, abs=0.03)


# ---- a full run ---------------------------------------------------------------------------------------------------
def test_training_lowers_loss_and_raises_p_at_1(trained_run, task, tiny_model):
    log = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    validations = [entry["validation"]["P@1"] for entry in log if "validation" in entry]
    assert validations[-1] > validations[0] + 0.3
    before = p_at_1_on_test(xmr.load_encoder(tiny_model), task)
    after = p_at_1_on_test(xmr.load_encoder(trained_run / "encoder"), task)
    assert after > before + 0.3, (before, after)
    for name in ("recipe.json", "summary.json", "training_curve.png", "last/xmr_encoder.json"):
        assert (trained_run / name).is_file(), name
    assert len(list((trained_run / "checkpoints/dual-encoder").iterdir())) == 2  # keep: 2


def test_trained_encoder_builds_with_the_cli_and_centroid_index_loads(trained_run, task, tmp_path):
    from xmr.cli import main

    out = tmp_path / "index"
    assert main(["build", "--labels", str(task / "labels.jsonl"), "--encoder", str(trained_run / "encoder"),
                 "--out", str(out)]) == 0
    index = xmr.load_index(out)
    enriched = xmr.load_index(trained_run / "index")
    assert index.manifest["encoder"] == enriched.manifest["encoder"]
    assert p_at_1_on_test(enriched, task) >= p_at_1_on_test(index, task) - 0.05


@pytest.mark.parametrize("loss, negatives, batching", [
    ({"name": "decoupled-softmax"}, {"mined": {"per_query": 2, "depth": 5, "refresh_every": 20}}, {}),
    ({"name": "ohnm-triplet", "options": {"k": 5}}, {"positive_sampling": "inverse-propensity"},
     {"clustered": {"cluster_size": 4, "start_epoch": 1}}),
])
def test_other_losses_and_negatives_learn(tmp_path, task, tiny_model, loss, negatives, batching):
    recipe = write_recipe(tmp_path, task, {"type": "sentence-transformers", "model": tiny_model}, loss=loss,
                          negatives=negatives, batching=batching, optimizer={"accumulate": 2},
                          schedule={"epochs": 6})
    train(recipe, say=lambda message: None)
    log = [json.loads(line) for line in (tmp_path / "runs/run/log.jsonl").read_text().splitlines()]
    validations = [entry["validation"]["P@1"] for entry in log if "validation" in entry]
    assert validations[-1] > validations[0] + 0.2, validations


def test_existing_run_needs_resume_or_restart(trained_run, task, tiny_model):
    recipe = load_recipe(trained_run.parent.parent / "recipe.yaml")
    with pytest.raises(xmr.XMRError, match="already exists"):
        train(recipe, say=lambda message: None)
    changed = load_recipe(trained_run.parent.parent / "recipe.yaml", {"optimizer.lr": 0.5})
    with pytest.raises(xmr.XMRError, match="recipe changed"):
        train(changed, resume=True, say=lambda message: None)


# ---- crashes and resume -----------------------------------------------------------------------------------------
def run_cli(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xmr.cli", "train", str(recipe), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())


def final_state(run: Path) -> tuple[dict, dict]:
    from safetensors.numpy import load_file

    summary = json.loads((run / "summary.json").read_text())
    weights = load_file(next((run / "last" / "model").glob("*.safetensors")))
    return summary["best"], weights


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.is_file():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)


def test_kill_9_then_resume_gives_the_same_result(tmp_path, task, tiny_model):
    encoder = {"type": "sentence-transformers", "model": tiny_model}
    sections = {"schedule": {"epochs": 8}, "checkpoint": {"every": 20, "keep": 1}}
    straight = tmp_path / "straight"
    straight.mkdir()
    train(write_recipe(straight, task, encoder, **sections), say=lambda message: None)

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    recipe = write_recipe(crashed, task, encoder, **sections)
    process = run_cli(recipe)
    wait_for(crashed / "runs/run/checkpoints/dual-encoder/step-0000040/trainer.json", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (crashed / "runs/run/summary.json").exists(), "the run finished before it was killed"
    resumed = run_cli(recipe, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]

    best, weights = final_state(straight / "runs/run")
    best_resumed, weights_resumed = final_state(crashed / "runs/run")
    assert best == best_resumed
    assert all(np.array_equal(weights[name], weights_resumed[name]) for name in weights)


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path, task, tiny_model):
    recipe = write_recipe(tmp_path, task, {"type": "sentence-transformers", "model": tiny_model},
                          schedule={"epochs": 40}, checkpoint={"every": 1000})
    process = run_cli(recipe)
    wait_for(tmp_path / "runs/run/log.jsonl", process)
    while "loss" not in (tmp_path / "runs/run/log.jsonl").read_text():
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 2
    assert "continue with --resume" in process.stderr.read().decode()
    checkpoints = list((tmp_path / "runs/run/checkpoints/dual-encoder").glob("step-*/trainer.json"))
    assert len(checkpoints) == 1
    step = json.loads(checkpoints[0].read_text())["step"]
    logged = [json.loads(line) for line in (tmp_path / "runs/run/log.jsonl").read_text().splitlines()]
    assert 0 < step < 600 and max(entry["step"] for entry in logged) == step


# ---- decoder LLM with LoRA, fused text+image ----------------------------------------------------------------------
def test_lora_decoder_trains_and_reloads(tmp_path, task, tiny_decoder):
    encoder = {"type": "decoder-llm", "model": tiny_decoder, "dtype": "float32"}
    recipe = write_recipe(tmp_path, task, encoder, lora={"r": 4, "alpha": 8}, optimizer={"lr": 3e-3},
                          schedule={"epochs": 6})
    train(recipe, say=lambda message: None)
    run = tmp_path / "runs/run"
    adapter = json.loads((run / "encoder/adapter/adapter_config.json").read_text())
    assert adapter["use_rslora"] is True and adapter["r"] == 4  # ViXML's rank-stabilised scaling, alpha/sqrt(r)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    validations = [entry["validation"]["P@1"] for entry in log if "validation" in entry]
    assert validations[-1] > validations[0] + 0.15, validations
    before = p_at_1_on_test(xmr.load_encoder(encoder), task)
    after = p_at_1_on_test(xmr.load_encoder(run / "encoder"), task)
    assert after > before + 0.15, (before, after)


def test_fused_encoder_trains_its_image_projection(tmp_path, tiny_model, tiny_clip, images):
    labels = [{"id": number, "text": text} for number, text in enumerate(["python sql", "forklift truck",
                                                                          "cook food"])]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(record) + "\n" for record in labels))
    train_rows = [{"id": number, "text": "photo", "images": [images[number % 3]], "labels": [number % 3]}
                  for number in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(record) + "\n" for record in train_rows))
    encoder = {"type": "fused", "text": {"type": "sentence-transformers", "model": tiny_model},
               "image": {"model": tiny_clip}}
    recipe = {"name": "fused", "output": str(tmp_path / "runs"), "encoder": encoder,
              "data": {"train": str(tmp_path / "train.jsonl"), "labels": str(tmp_path / "labels.jsonl"),
                       "image_roots": [str(Path(images[0]).parent)]},
              "batching": {"batch_size": 8}, "schedule": {"max_steps": 4}, "checkpoint": {"every": 2},
              "optimizer": {"lr": 0.0, "projection_lr": 1e-2, "warmup": 0.0}}
    (tmp_path / "fused.yaml").write_text(yaml.safe_dump(recipe))
    before = xmr.load_encoder(encoder)
    train(tmp_path / "fused.yaml", say=lambda message: None)
    after = xmr.load_encoder(tmp_path / "runs/fused/encoder")
    query = [{"images": [images[0]]}]
    assert not np.allclose(before.encode_queries(query), after.encode_queries(query))
    assert np.allclose(before.encode_labels(["cook food"]), after.encode_labels(["cook food"]), atol=1e-6)


def test_a_second_process_on_the_same_run_is_refused(tmp_path, task):
    from xmr.train.run import lock_run_folder

    recipe = load_recipe(write_recipe(tmp_path, task, "unused"))
    first = lock_run_folder(recipe.run_folder)
    with pytest.raises(xmr.XMRError, match="in use by another xmr train"):
        train(recipe, say=lambda message: None)
    first.close()
    lock_run_folder(recipe.run_folder).close()


def test_zero_steps_keeps_the_encoder_and_builds_the_index(trained_run, task, tmp_path):
    recipe = write_recipe(tmp_path, task, str(trained_run / "encoder"), schedule={"max_steps": 0},
                          index={"centroid_weight": 0.5})
    summary = train(recipe, say=lambda message: None)
    assert summary["steps"] == 0
    kept = xmr.load_encoder(tmp_path / "runs/run/encoder")
    texts = ["python sql", "forklift truck"]
    assert np.allclose(kept.encode_queries(texts), xmr.load_encoder(trained_run / "encoder").encode_queries(texts))
    assert xmr.load_index(tmp_path / "runs/run/index").manifest["representation"]["normalized"] is True


def test_bf16_autocast_trains(tmp_path, task, tiny_model):
    recipe = write_recipe(tmp_path, task, {"type": "sentence-transformers", "model": tiny_model},
                          optimizer={"precision": "bf16"}, schedule={"max_steps": 5}, evaluation={"every": None})
    summary = train(recipe, say=lambda message: None)
    assert summary["precision"] == "bfloat16"
    assert np.isfinite(summary["final_loss"])
