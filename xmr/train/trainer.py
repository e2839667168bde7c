"""The training loop: a recipe in, a run folder out (checkpoints, ``log.jsonl``, curve, best and last encoders).

Per optimiser step: ``accumulate`` micro-batches, each scoring its queries against its label columns with the
recipe's loss (embeddings gathered across processes), then gradient averaging, clipping, AdamW and the linear
warm-up/decay schedule. Everything random is seeded from (seed, epoch, batch) or (seed, step), so a run resumed
from a checkpoint takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances, read_instances
from xmr.encoders import Encoder, load_encoder
from xmr.errors import XMRError
from xmr.evaluation import evaluate
from xmr.index import build_index_from_embeddings
from xmr.train import checkpoint as ckpt
from xmr.train import distributed, label_vectors
from xmr.train.batches import TrainingPairs, clustered_plan, make_batch, random_plan
from xmr.train.checkpoint import write_atomically
from xmr.train.log import MetricsLog
from xmr.train.losses import make_loss
from xmr.train.mining import mine_hard_negatives
from xmr.train.recipe import Recipe, load_recipe

RECIPE_FILE = "recipe.json"
SUMMARY_FILE = "summary.json"


class TrainingInterrupted(XMRError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and ``--resume`` continues the run."""


def train(recipe: Recipe | str | Path, resume: bool = False, restart: bool = False,
          say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a recipe; returns the run summary (also written to ``runs/NAME/summary.json``)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return Trainer(recipe, say).run(resume=resume, restart=restart)


def split_holdout(instances: Instances, size: int, seed: int) -> tuple[Instances, Instances | None]:
    """``size`` random training queries set aside for validation (never trained on)."""
    if size <= 0:
        return instances, None
    if size >= len(instances):
        raise XMRError(f"data.validation_size {size} leaves no training queries (of {len(instances)})")
    held = set(np.random.default_rng([seed, 7]).choice(len(instances), size=size, replace=False).tolist())
    rows = list(range(len(instances)))
    return (instances.subset([r for r in rows if r not in held], "train"),
            instances.subset([r for r in rows if r in held], "validation"))


def _text_model(encoder: Encoder) -> Any:
    """The object whose truncation length training may shorten (ST model, decoder encoder)."""
    return getattr(encoder, "text_encoder", encoder)


@contextlib.contextmanager
def truncation(encoder: Encoder, length: int | None) -> Iterator[None]:
    """Texts are cut to ``length`` tokens inside the block (training), and to the encoder's own length after."""
    model = _text_model(encoder)
    attribute, holder = ("max_length", model) if hasattr(model, "max_length") else ("max_seq_length", model.model)
    saved = getattr(holder, attribute)
    if length is not None:
        setattr(holder, attribute, length)
    try:
        yield
    finally:
        setattr(holder, attribute, saved)


def _precision(name: str, device: str) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class Trainer:
    def __init__(self, recipe: Recipe, say: Callable[[str], None] = print) -> None:
        self.recipe = recipe
        self.processes = distributed.start()
        self.say = say if self.processes.main else (lambda message: None)
        self.run_folder = recipe.run_folder
        self.stop_signal: int | None = None

    # ---- set-up ---------------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        data = self.recipe.data
        self.labels = LabelCatalogue.from_file(data.labels)
        train = read_instances(data.train)
        train, holdout = split_holdout(train, data.validation_size, self.recipe.seed)
        if data.max_train is not None:
            train = train.subset(list(range(min(data.max_train, len(train)))), "train")
        self.train_instances = train
        self.validation = read_instances(data.validation) if data.validation else holdout
        self.pairs = TrainingPairs.from_instances(train, self.labels)
        self.say(f"{len(self.pairs)} training queries ({self.pairs.dropped} without a known label dropped), "
                 f"{len(self.labels)} labels" + (f", {len(self.validation)} validation queries"
                                                 if self.validation is not None else ""))

    def _build_model(self) -> None:
        recipe = self.recipe
        torch.manual_seed(recipe.seed)
        self.encoder = load_encoder(recipe.encoder, device=self.processes.device)
        if recipe.lora is not None:
            self._add_lora()
        self.encoder.train_mode(True)
        self.groups = self.encoder.parameter_groups()
        learning_rates = {"encoder": recipe.optimizer.lr, "projection": recipe.optimizer.projection_lr}
        self.parameters = [parameter for group in self.groups.values() for parameter in group]
        self.optimizer = torch.optim.AdamW(
            [{"params": parameters, "lr": learning_rates[name]} for name, parameters in self.groups.items()],
            weight_decay=recipe.optimizer.weight_decay)
        warmup = int(recipe.optimizer.warmup * self.total_steps)
        total = self.total_steps

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
            if step < warmup:
                return step / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.autocast_dtype = _precision(recipe.optimizer.precision, self.processes.device)
        self.scaler = torch.amp.GradScaler(self.processes.device.split(":")[0],
                                           enabled=self.autocast_dtype == torch.float16)
        self.loss = make_loss(recipe.loss.name, recipe.loss.options)

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        text = _text_model(self.encoder)
        if not hasattr(text, "backbone"):
            raise XMRError("lora: LoRA adapters are for decoder-llm encoders (or fused ones over a decoder)")
        spec = self.recipe.lora
        config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                            target_modules=spec.target_modules)
        text.backbone = get_peft_model(text.backbone, config)

    def _schedule_lengths(self) -> None:
        recipe = self.recipe
        self.global_batch = recipe.batching.batch_size * self.processes.world
        self.batches_per_epoch = math.ceil(len(self.pairs) / self.global_batch)
        steps_per_epoch = math.ceil(self.batches_per_epoch / recipe.optimizer.accumulate)
        if recipe.schedule.max_steps is not None:  # 0: no encoder training, only the final index stage
            self.total_steps = recipe.schedule.max_steps
        else:
            self.total_steps = max(1, math.ceil(recipe.schedule.epochs * steps_per_epoch))

    # ---- the pieces of a step --------------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list[np.ndarray]:
        clustered = self.recipe.batching.clustered
        if clustered is None or epoch < clustered.start_epoch:
            return random_plan(len(self.pairs), self.global_batch, self.recipe.seed, epoch)
        reclusters = (epoch - clustered.start_epoch) // clustered.recluster_every
        size = min(clustered.cluster_size * 2 ** reclusters, clustered.max_cluster_size)
        if (epoch - clustered.start_epoch) % clustered.recluster_every == 0 or self.query_vectors is None:
            self.encoder.train_mode(False)
            self.query_vectors = self.encoder.encode_queries(self.pairs.queries)
            self.encoder.train_mode(True)
        self.say(f"epoch {epoch}: NGAME clustered batches, cluster size {size}")
        return clustered_plan(self.query_vectors, size, self.global_batch, self.recipe.seed, epoch)

    def _mine(self) -> None:
        mined = self.recipe.negatives.mined
        self.encoder.train_mode(False)
        started = time.perf_counter()
        self.hard_negatives = mine_hard_negatives(self.encoder, self.pairs, mined.depth, mined.factory)
        self.encoder.train_mode(True)
        self.mined_at = self.step
        self.say(f"step {self.step}: mined {mined.depth} hard negatives per query in "
                 f"{time.perf_counter() - started:.1f} s")

    def _micro_batch_loss(self, query_rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        negatives = self.recipe.negatives
        batch = make_batch(self.pairs, query_rows, rng, one_positive=self.loss.one_positive_per_query,
                           all_labels=len(self.labels) <= negatives.all_labels_up_to,
                           positive_weights=self.positive_weights,
                           hard_negatives=self.hard_negatives,
                           negatives_per_query=negatives.mined.per_query if negatives.mined else 0)
        processes, device = self.processes, self.processes.device
        query_share, query_sizes = distributed.shard(len(batch.queries), processes)
        label_share, label_sizes = distributed.shard(len(batch.columns), processes)
        label_items = self.label_items
        with torch.autocast(device.split(":")[0], dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            queries = self.encoder.embed([self.pairs.queries[row] for row in batch.queries[query_share]], "query")
            labels = self.encoder.embed([label_items[column] for column in batch.columns[label_share]], "label")
        queries = distributed.gather_with_grad(queries.float(), query_sizes, processes)
        labels = distributed.gather_with_grad(labels.float(), label_sizes, processes)
        scores = queries @ labels.T
        return self.loss(scores, torch.from_numpy(batch.positives).to(scores.device),
                         torch.from_numpy(batch.anchors).to(scores.device))

    def _optimiser_step(self) -> dict[str, float]:
        recipe = self.recipe
        torch.manual_seed(recipe.seed * 1_000_003 + self.step)  # dropout masks depend on the step only
        total_loss = 0.0
        for _ in range(recipe.optimizer.accumulate):
            if self.batch_position >= len(self.plan):
                self.epoch += 1
                self.batch_position = 0
                self.plan = self._plan(self.epoch)
            rows = self.plan[self.batch_position]
            rng = np.random.default_rng([recipe.seed, self.epoch, self.batch_position])
            loss = self._micro_batch_loss(rows, rng) / recipe.optimizer.accumulate
            self.scaler.scale(loss).backward()
            total_loss += float(loss.detach())
            self.batch_position += 1
        distributed.average_gradients(self.parameters, self.processes)
        self.scaler.unscale_(self.optimizer)
        clip = recipe.optimizer.clip_norm
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, clip if clip else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": total_loss, "grad_norm": float(norm), "lr": self.scheduler.get_last_lr()[0]}

    # ---- validation, checkpoints, outputs ------------------------------------------------------------------
    def validate(self, encoder: Encoder | None = None) -> dict[str, float]:
        """Metrics of the current (or given) encoder on the validation queries, through ``xmr.evaluation``."""
        encoder = encoder or self.encoder
        encoder.train_mode(False)
        try:
            index = build_index_from_embeddings(self.labels, encoder.encode_labels(self.label_items), None,
                                                encoder=encoder)
            report = evaluate(index, self.validation, ks=self.recipe.evaluation.ks, train=self.train_instances)
        finally:
            encoder.train_mode(True)
        return report["metrics"]

    def _evaluate_now(self) -> None:
        if self.validation is None or not self.processes.main:
            distributed.barrier(self.processes)
            return
        metric = self.recipe.evaluation.metric
        metrics = self.validate()
        if metric not in metrics:
            raise XMRError(f"evaluation.metric: {metric!r} is not computed; choose one of {sorted(metrics)}")
        self.log.write({"step": self.step, "validation": metrics})
        self.say(f"step {self.step}: validation " + "  ".join(
            f"{name} {100 * metrics[name]:.2f}" for name in metrics if name.split("@")[0] in ("P", "PSP", "R")))
        if self.best is None or metrics[metric] > self.best["value"]:
            self.best = {"step": self.step, "value": metrics[metric], "metrics": metrics}
            write_atomically(self.run_folder / "encoder", self.encoder.save)
        distributed.barrier(self.processes)

    def _checkpoint(self) -> None:
        if self.processes.main:
            arrays = {"plan": np.concatenate(self.plan), "plan_sizes": np.array([len(b) for b in self.plan])}
            if self.hard_negatives is not None:
                arrays["hard_negatives"] = self.hard_negatives
            if self.query_vectors is not None:
                arrays["query_vectors"] = self.query_vectors
            state = {"step": self.step, "epoch": self.epoch, "batch_position": self.batch_position,
                     "mined_at": self.mined_at, "best": self.best, "elapsed_s": self.elapsed()}
            ckpt.save_checkpoint(ckpt.checkpoint_folder(self.run_folder, self.step),
                                 weights=ckpt.trainable_weights(self.groups), optimizer=self.optimizer,
                                 scheduler=self.scheduler, scaler=self.scaler, arrays=arrays, state=state)
            ckpt.prune_checkpoints(self.run_folder, self.recipe.checkpoint.keep)
        distributed.barrier(self.processes)

    def _restore(self, folder: Path) -> None:
        saved = ckpt.load_checkpoint(folder)
        ckpt.load_trainable_weights(self.groups, saved["weights"], folder)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict({**saved["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        if saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        arrays = saved["arrays"]
        self.plan = np.split(arrays["plan"], np.cumsum(arrays["plan_sizes"])[:-1])
        self.hard_negatives = arrays.get("hard_negatives")
        self.query_vectors = arrays.get("query_vectors")
        self.step, self.epoch = saved["step"], saved["epoch"]
        self.batch_position, self.mined_at = saved["batch_position"], saved["mined_at"]
        self.best, self.elapsed_before = saved["best"], saved["elapsed_s"]

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _lock(self) -> None:
        """One process tree per run folder: a second ``xmr train`` on it (or a --restart under a live run) is
        refused. The lock lives next to the folder and dies with the process, so ``kill -9`` leaves none behind."""
        import fcntl

        self.run_folder.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.run_folder.parent / f".{self.run_folder.name}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XMRError(f"{self.run_folder} is in use by another xmr train process") from None

    def _prepare_folder(self, resume: bool, restart: bool) -> Path | None:
        run, recipe_json = self.run_folder, self.recipe.to_dict()
        if self.processes.main:
            self._lock()
        stored = run / RECIPE_FILE
        if resume:
            if not stored.is_file():
                raise XMRError(f"{run}: nothing to resume (no {RECIPE_FILE}); run without --resume")
            if json.loads(stored.read_text(encoding="utf-8")) != json.loads(json.dumps(recipe_json)):
                raise XMRError(f"{run}: the recipe changed since the run started; resume needs the same recipe "
                               "(or start again with --restart)")
            return ckpt.latest_checkpoint(run)
        if run.exists() and any(run.iterdir()):
            if not restart:
                raise XMRError(f"{run} already exists: continue it with --resume or start over with --restart")
            if self.processes.main:
                shutil.rmtree(run)
        distributed.barrier(self.processes)
        if self.processes.main:
            run.mkdir(parents=True, exist_ok=True)
            stored.write_text(json.dumps(recipe_json, indent=2) + "\n", encoding="utf-8")
        return None

    def _on_signal(self, number: int, frame: Any) -> None:
        self.stop_signal = number

    # ---- the run -----------------------------------------------------------------------------------------------
    def run(self, resume: bool = False, restart: bool = False) -> dict[str, Any]:
        recipe = self.recipe
        resume_from = self._prepare_folder(resume, restart)
        self._load_data()
        self._schedule_lengths()
        self._build_model()
        self.label_items = self.labels.items()
        sampling = recipe.negatives
        self.positive_weights = (self.pairs.label_weights(*sampling.propensity)
                                 if sampling.positive_sampling == "inverse-propensity" else None)
        self.step, self.epoch, self.batch_position, self.mined_at = 0, 0, 0, None
        self.best, self.elapsed_before, self.hard_negatives, self.query_vectors = None, 0.0, None, None
        self.started = time.perf_counter()
        if resume_from is not None:
            self._restore(resume_from)
            self.say(f"resuming {self.run_folder} at step {self.step} (epoch {self.epoch}, batch "
                     f"{self.batch_position}) from {resume_from.name}")
        self.log = MetricsLog(self.run_folder, resume_step=self.step if resume_from is not None else None)
        if resume_from is None:
            self.plan = self._plan(0)
            if recipe.evaluation.before and recipe.evaluation.every:
                self._evaluate_now()
        self.say(f"{self.total_steps} optimiser steps of {self.global_batch} queries x "
                 f"{recipe.optimizer.accumulate} micro-batches ({self.batches_per_epoch} batches per epoch), "
                 f"loss {recipe.loss.name}, device {self.processes.device}")
        previous = {number: signal.signal(number, self._on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._loop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        return self._finish()

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        recipe = self.recipe
        mined, every = recipe.negatives.mined, recipe.evaluation.every
        progress = tqdm(total=self.total_steps, initial=self.step, desc=recipe.name,
                        disable=None if self.processes.main else True)  # None: off when not a terminal
        while self.step < self.total_steps:
            if mined is not None and self.step % mined.refresh_every == 0 and self.mined_at != self.step:
                self._mine()
            with truncation(self.encoder, recipe.batching.train_max_length):
                entry = self._optimiser_step()
            entry.update(step=self.step, epoch=self.epoch, elapsed_s=round(self.elapsed(), 3))
            if self.processes.main:
                self.log.write(entry)
            progress.update(1)
            progress.set_postfix(loss=f"{entry['loss']:.4f}")
            if progress.disable and self.step % max(1, self.total_steps // 20) == 0:  # logs without a terminal
                self.say(f"step {self.step}/{self.total_steps}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  "
                         f"{entry['elapsed_s']:.0f} s")
            if every and self.step % every == 0 and self.step < self.total_steps:
                self._evaluate_now()
            if self.step % recipe.checkpoint.every == 0 or self.stop_signal is not None:
                self._checkpoint()
            if self.stop_signal is not None:
                progress.close()
                raise TrainingInterrupted(f"stopped by signal {self.stop_signal} at step {self.step}; checkpoint "
                                          f"written, continue with --resume")
        progress.close()

    def _finish(self) -> dict[str, Any]:
        recipe, run = self.recipe, self.run_folder
        train_seconds = self.elapsed()
        if self.processes.main:
            write_atomically(run / "last", self.encoder.save)
        if self.validation is not None:
            self._evaluate_now()  # the final weights compete for "best" too
        if self.processes.main and self.best is None:  # no validation data: the last weights are the result
            write_atomically(run / "encoder", self.encoder.save)
        summary = {
            "recipe": recipe.name,
            "steps": self.step,
            "epochs": round(self.step * recipe.optimizer.accumulate / self.batches_per_epoch, 3),
            "train_seconds": round(train_seconds, 1),
            "steps_per_second": round(self.step / train_seconds, 3) if train_seconds else None,
            "device": self.processes.device,
            "processes": self.processes.world,
            "precision": str(self.autocast_dtype or "fp32").replace("torch.", ""),
            "final_loss": next((entry["loss"] for entry in reversed(self.log.read()) if "loss" in entry), None),
            "best": self.best,
            "encoder": str(run / "encoder"),
        }
        if self.processes.main:
            if recipe.index is not None:
                started = time.perf_counter()
                summary["index"] = str(self._build_final_index())
                summary["index_seconds"] = round(time.perf_counter() - started, 1)
            (run / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            self.log.plot(recipe.evaluation.metric)
            self.say(f"trained {self.step} steps in {train_seconds:.0f} s; encoder: {run / 'encoder'}")
        distributed.barrier(self.processes)
        return summary

    def _build_final_index(self) -> Path:
        """``runs/NAME/index`` of the best encoder: label text vectors, centroid-enriched or learned label vectors."""
        spec, learned, out = self.recipe.index, self.recipe.label_vectors, self.run_folder / "index"
        encoder = load_encoder(self.run_folder / "encoder", device=self.processes.device)
        encoder.train_mode(False)
        vectors = encoder.encode_labels(self.label_items)
        if learned is not None or spec.centroid_weight > 0:
            query_vectors = encoder.encode_queries(self.pairs.queries)
            centroids, counts = label_vectors.label_centroids(query_vectors, self.pairs.positives, len(self.labels))
            if learned is not None:
                vectors = self._learn_label_vectors(encoder, vectors, centroids, counts, query_vectors)
            else:
                vectors = label_vectors.centroid_enriched(vectors, centroids, counts, spec.centroid_weight)
        unit = bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3))
        build_index_from_embeddings(self.labels, vectors, out, encoder=encoder, factory=spec.factory, normalized=unit)
        self.say(f"index of the trained encoder: {out}")
        return out

    def _learn_label_vectors(self, encoder: Encoder, text: np.ndarray, centroids: np.ndarray, counts: np.ndarray,
                             query_vectors: np.ndarray) -> np.ndarray:
        spec = self.recipe.label_vectors
        started = time.perf_counter()
        clusters = label_vectors.balanced_clusters(text, spec.clusters or max(1, len(text) // 8), self.recipe.seed)
        torch.manual_seed(self.recipe.seed)
        model = label_vectors.LabelVectorModel(label_vectors.LabelParts(text, centroids, counts, clusters),
                                               spec.parts, spec.combine)
        validate = self._label_vector_validator(encoder) if spec.select_on_validation else None
        fit = label_vectors.train_label_vectors(
            model, query_vectors, self.pairs.positives, loss=spec.loss, shortlist=spec.shortlist, epochs=spec.epochs,
            batch_size=spec.batch_size, lr=spec.lr, weight_decay=spec.weight_decay, temperature=spec.temperature,
            seed=self.recipe.seed, validate=validate)
        self.log.write({"step": self.step, "label_vectors": {"losses": fit.losses, "validation": fit.validation,
                                          "best_epoch": fit.best_epoch, "metric": self.recipe.evaluation.metric}})
        if fit.losses:
            metric, scores = self.recipe.evaluation.metric, fit.validation
            chosen = (f"; validation {metric} {100 * scores[0]:.2f} -> {100 * scores[fit.best_epoch]:.2f} "
                      f"(epoch {fit.best_epoch} kept)" if scores else "")
            self.say(f"label vectors ({'+'.join(spec.parts)}, {spec.combine}): loss {fit.losses[0]:.4f} -> "
                     f"{fit.losses[-1]:.4f} in {time.perf_counter() - started:.1f} s{chosen}")
        return label_vectors.combined_vectors(model)

    def _label_vector_validator(self, encoder: Encoder) -> Callable[[np.ndarray], float] | None:
        """Scores candidate label vectors on the held-out queries (encoded once) by ``evaluation.metric``."""
        if self.validation is None:
            return None
        metric, ks = self.recipe.evaluation.metric, self.recipe.evaluation.ks
        validation_vectors = encoder.encode_queries(self.validation.items())

        def score(vectors: np.ndarray) -> float:
            unit = bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3))
            index = build_index_from_embeddings(self.labels, vectors, None, encoder=encoder, normalized=unit)
            report = evaluate(index, self.validation, ks=ks, train=self.train_instances,
                              query_vectors=validation_vectors)
            return float(report["metrics"][metric])

        return score
