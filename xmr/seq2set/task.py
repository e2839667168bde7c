"""Training task ``seq2set``: OTSeq2Set, and its two baselines in the same harness (MLC2Seq, a BCE head), on an
xmr encoder's token states; the output is ``runs/NAME/predictor``, a ``seq2set`` predictor folder ``xmr eval``
scores (P@k from the ranked list, micro/macro/example F1 from the generated sets).

* ``otseq2set`` (Cao et al.): student forcing for ``T`` steps (the largest training label count, capped by
  ``max_labels``), Hungarian-matched NLL with the empty token weighted ``empty_weight`` plus ``lambda_ot`` x the
  IPOT distance (:mod:`xmr.seq2set.losses`).
* ``mlc2seq`` (Nam et al. 2017): teacher forcing on the labels ordered by descending training frequency, then the
  end token; greedy decoding stops at the first end token.
* ``bce``: a one-vs-all head on the pooled source states (the spine's ``OneVsAllBCELoss``), set = probability >=
  ``threshold``.

With ``shortlist: S`` every query scores only its top-``S`` labels from an xmr index (:mod:`xmr.seq2set.shortlist`);
``shortlist: 0`` is the paper's full softmax. The frozen encoder's token states are computed once per run (and
cached on disk with ``cache_token_states``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from xmr import metrics as m
from xmr.encoders import load_encoder
from xmr.evaluation import ranking_metrics, truth_as_rows
from xmr.index import load_index
from xmr.io.atomic import write_folder_atomically
from xmr.seq2set.losses import OTSeq2SetLoss, TeacherForcingLoss
from xmr.seq2set.model import Seq2SetNet
from xmr.seq2set.predictor import WEIGHTS, Seq2SetPredictor, source_tensors
from xmr.seq2set.shortlist import retrieve, shortlist_index, with_gold
from xmr.seq2set.tokens import encode_texts, word_vectors
from xmr.train.batches import random_plan
from xmr.train.losses import ModelOutput, OneVsAllBCELoss
from xmr.train.recipe import DataSpec
from xmr.train.tasks import register_task
from xmr.train.tasks.base import LoopSettings, ParameterGroup, Task, TaskContext


@dataclass
class Seq2SetSpec:
    """The ``seq2set`` section (defaults: the reference's EUR-Lex configuration where it has one)."""

    model: Literal["otseq2set", "mlc2seq", "bce"] = "otseq2set"
    source: Literal["frozen", "bigru"] = "frozen"  # frozen encoder token states, or the paper's BiGRU over tokens
    hidden: int = 256
    dropout: float = 0.2
    max_labels: int = 24  # cap on the decoder steps T (the reference's max_time_step)
    empty_weight: float = 0.2
    lambda_ot: float = 8.0
    ipot_beta: float = 1.0
    ipot_iterations: int = 50
    shortlist: int = 0  # labels scored per query (0: every label, the paper's full softmax)
    shortlist_index: str | None = None  # an index folder; None: an exact index over the label text vectors
    centroid_weight: float = 0.0  # the built shortlist index: text + weight x centroid of the label's queries
    threshold: float = 0.5  # the BCE head's set threshold
    epochs: float = 10.0
    batch_size: int = 32
    lr: float = 1e-3
    clip_norm: float = 8.0  # the reference's CLIP
    cache_token_states: bool = True


@dataclass
class Seq2SetSections:
    data: DataSpec
    seq2set: Seq2SetSpec = field(default_factory=Seq2SetSpec)
    encoder: Any = "all-MiniLM-L6-v2"  # a sentence-transformers encoder (name, folder or config); frozen


@register_task("seq2set")
class Seq2SetTask(Task):
    """See the module docstring."""

    sections = Seq2SetSections
    distributed = False

    @classmethod
    def check(cls, sections: Any) -> list[str]:
        spec, problems = sections.seq2set, []
        least = {"hidden": 1, "max_labels": 1, "ipot_iterations": 1, "shortlist": 0, "batch_size": 1}
        problems += [f"seq2set.{name}: must be at least {value}" for name, value in least.items()
                     if getattr(spec, name) < value]
        for name in ("empty_weight", "lambda_ot", "lr", "centroid_weight", "epochs"):
            if getattr(spec, name) < 0:
                problems.append(f"seq2set.{name}: must be at least 0")
        if spec.ipot_beta <= 0:
            problems.append("seq2set.ipot_beta: must be positive")
        if not 0 <= spec.dropout < 1:
            problems.append("seq2set.dropout: must be in [0, 1)")
        if not 0 < spec.threshold < 1:
            problems.append("seq2set.threshold: must be in (0, 1)")
        if spec.shortlist_index is not None and not spec.shortlist:
            problems.append("seq2set.shortlist_index: needs seq2set.shortlist > 0")
        return problems

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.spec = spec = context.sections.seq2set
        self.started = time.perf_counter()
        data = context.data()
        self.labels, self.positives = data.labels, data.pairs.positives
        encoder = load_encoder(context.inputs.get("encoder", context.sections.encoder),
                               device=context.processes.device)
        encoder.train_mode(False)
        self.encoder = encoder
        keep = spec.source == "frozen"
        tick = time.perf_counter()
        self.train = encode_texts(encoder, data.pairs.queries, keep, spec.cache_token_states)
        label_vectors = encoder.encode_labels(self.labels.items())
        self.encode_seconds = time.perf_counter() - tick
        n_labels = len(self.labels)
        counts = m.label_counts(self.positives, n_labels)
        # frequency order (MLC2Seq's target order; also which golds stay when a query has more than max_labels)
        self.golds = [labels[np.lexsort((labels, -counts[labels]))][: spec.max_labels] for labels in self.positives]
        self.steps = max(len(labels) for labels in self.golds)
        self.index = None
        self.train_shortlist = None
        self.shortlist_recall = None
        if spec.shortlist:
            self.index = (load_index(spec.shortlist_index, encoder=encoder) if spec.shortlist_index else
                          shortlist_index(self.labels, label_vectors, encoder, self.train.pooled, self.positives,
                                          spec.centroid_weight))
            self.train_shortlist, self.shortlist_recall = with_gold(
                retrieve(self.index, self.train.pooled, min(spec.shortlist, n_labels)), self.golds)
        words = word_vectors(encoder) if spec.source == "bigru" else None
        self.net = Seq2SetNet(n_labels, label_vectors.shape[1], encoder.dim, spec.hidden, spec.source,
                              0 if words is None else len(words), spec.dropout)
        self.net.initialise(label_vectors, words)
        decoding = {"model": spec.model, "steps": self.steps + (spec.model == "mlc2seq"),
                    "shortlist": min(spec.shortlist, n_labels), "threshold": spec.threshold}
        self.predictor = Seq2SetPredictor(self.net, decoding, self.labels, encoder, self.index)
        self.objective = {"otseq2set": OTSeq2SetLoss(spec.empty_weight, spec.lambda_ot, spec.ipot_beta,
                                                     spec.ipot_iterations),
                          "mlc2seq": TeacherForcingLoss(), "bce": OneVsAllBCELoss(temperature=1.0)}[spec.model]
        self.validation = data.validation
        if data.validation is not None:
            self.validation_encoded = encode_texts(encoder, data.validation.items(), keep, spec.cache_token_states)
            self.validation_shortlist = self.predictor.candidates(self.validation_encoded, data.validation.items())
        self.plan: list[np.ndarray] = []
        context.say(f"seq2set {spec.model}: {len(self.golds)} queries, {n_labels} labels, T = {self.steps} steps, "
                    + (f"shortlist {spec.shortlist} (gold recall {100 * self.shortlist_recall:.1f}%)"
                       if spec.shortlist else "full softmax") + f"; encoded in {self.encode_seconds:.0f} s")

    # ---- what the loop drives --------------------------------------------------------------------------------
    def settings(self) -> LoopSettings:
        batches = math.ceil(len(self.golds) / self.spec.batch_size)
        validating = self.validation is not None
        return LoopSettings(batches, epochs=self.spec.epochs, weight_decay=0.0, warmup=0.0, lr_schedule="linear",
                            clip_norm=self.spec.clip_norm, precision="fp32", validate_at_end=validating)

    def parameter_groups(self) -> list[ParameterGroup]:
        return [ParameterGroup("seq2set", [p for p in self.net.parameters() if p.requires_grad], self.spec.lr)]

    def begin_epoch(self, epoch: int) -> int:
        self.plan = random_plan(len(self.golds), self.spec.batch_size, self.context.recipe.seed, epoch)
        self.net.train()
        return len(self.plan)

    def forward(self, position: int, rng: np.random.Generator) -> tuple[str, Any]:
        rows = self.plan[position]
        source, mask = source_tensors(self.net, self.train.take(rows))
        golds = [self.golds[row] for row in rows]
        short = None if self.train_shortlist is None else torch.from_numpy(self.train_shortlist[rows])
        if self.spec.model == "bce":
            return "bce", self._head_output(source, mask, golds, short)
        gold = gold_columns(golds, None if short is None else short.numpy())
        if self.spec.model == "mlc2seq":
            teacher, targets = teacher_sequences(gold, golds, self.steps + 1, self.net.empty,
                                                 end_column=self.net.n_labels if short is None else short.shape[1])
            return "mlc2seq", (self.net.decode(source, mask, self.steps + 1, short, teacher=teacher), targets)
        column_rows = self.net.column_rows(short)
        embeddings = self.net.table[: self.net.n_labels + 1] if short is None else self.net.table[column_rows]
        return "otseq2set", (self.net.decode(source, mask, self.steps, short), gold, embeddings)

    def _head_output(self, source: torch.Tensor, mask: torch.Tensor, golds: list[np.ndarray],
                     short: torch.Tensor | None) -> ModelOutput:
        query = self.net.head(source, mask)
        if short is None:
            cells = torch.zeros(len(golds), self.net.n_labels, dtype=torch.bool)
            for row, labels in enumerate(golds):
                cells[row, torch.from_numpy(labels)] = True
            return ModelOutput(query, self.net.head_labels(torch.arange(self.net.n_labels)), cells)
        cells = torch.from_numpy(np.stack([np.isin(short[row].numpy(), labels) for row, labels in enumerate(golds)]))
        return ModelOutput(query, self.net.head_labels(short), cells, similarity=per_query_scores)

    def loss(self, output: tuple[str, Any]) -> torch.Tensor:
        kind, value = output
        if kind == "bce":
            return self.objective(value)
        return self.objective(*value)

    def validate(self) -> dict[str, float] | None:
        """Ranking metrics and set F1 of the current weights on the validation queries (encoded once)."""
        if self.validation is None:
            return None
        self.net.eval()
        ks = self.context.recipe.evaluation.ks
        rows, _, sets = self.predictor.outputs(self.validation_encoded, self.validation_shortlist, max(ks))
        truth, _ = truth_as_rows(self.labels, self.validation.labels)
        values = ranking_metrics(rows, truth, ks, None)
        values.update(m.set_metrics(sets, truth))
        self.net.train()
        return values

    def save(self, which: str) -> None:
        """``runs/NAME/seq2set/{best,last}/weights.safetensors``."""
        weights = {name: value.detach().clone().contiguous() for name, value in self.net.state_dict().items()}
        write_folder_atomically(self.context.run / "seq2set" / which, lambda folder: save_file(weights,
                                                                                                 folder / WEIGHTS))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"plan": np.concatenate(self.plan), "plan_sizes": np.array([len(batch) for batch in self.plan])}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.plan = np.split(arrays["plan"], np.cumsum(arrays["plan_sizes"])[:-1])

    def finish(self, best: dict[str, Any] | None) -> dict[str, Any]:
        """``runs/NAME/predictor``: the best weights as a ``seq2set`` predictor folder."""
        self.net.load_state_dict(load_file(self.context.run / "seq2set" / "best" / WEIGHTS))
        out = self.predictor.save(self.context.run / "predictor")
        self.context.say(f"seq2set predictor: {out}")
        return {"predictor": str(out), "decoder_steps": self.steps, "shortlist": self.predictor.decoding["shortlist"],
                "shortlist_gold_recall": self.shortlist_recall, "encode_seconds": round(self.encode_seconds, 1),
                "task_seconds": round(time.perf_counter() - self.started, 1)}


def per_query_scores(query: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(b, d) x (b, C, d) -> (b, C)``: each query against its own shortlisted label columns."""
    return torch.einsum("bd,bcd->bc", query.float(), labels.float())


def gold_columns(golds: list[np.ndarray], shortlist: np.ndarray | None) -> torch.Tensor:
    """Each query's gold labels as output columns ``(b, G)`` padded with -1 (a shortlist row holds every gold)."""
    width = max(len(labels) for labels in golds)
    out = np.full((len(golds), width), -1, dtype=np.int64)
    for row, labels in enumerate(golds):
        if shortlist is None:
            out[row, : len(labels)] = labels
        else:
            position = {int(label): column for column, label in enumerate(shortlist[row])}
            out[row, : len(labels)] = [position[int(label)] for label in labels]
    return torch.from_numpy(out)


def teacher_sequences(gold: torch.Tensor, golds: list[np.ndarray], steps: int, empty_row: int,
                      end_column: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MLC2Seq's teacher inputs (table rows fed after each step: the gold label, then the end token) and targets
    (gold columns, the end column, then -100), both ``(b, steps)``, for frequency-ordered ``golds``."""
    teacher = torch.full((len(golds), steps), empty_row, dtype=torch.long)
    targets = torch.full((len(golds), steps), -100, dtype=torch.long)
    for row, labels in enumerate(golds):
        n = len(labels)
        teacher[row, :n] = torch.from_numpy(labels)
        targets[row, :n] = gold[row, :n]
        targets[row, n] = end_column
    return teacher, targets
