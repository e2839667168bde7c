"""UWE's training data: several bipartite graphs (query set, target set, edges), each with a sampling weight.

UWE (Sec. 3) trains one ranker over many tasks at once; every task is a bipartite graph between a query set and a
target set (ESCO: sentence or alternative name -> skill, skill -> its sentences, job title -> occupation). A graph is
an instances file (queries with their target ids) and the target catalogue; ``reverse: true`` swaps the roles (the
targets become the queries and the original queries their targets), so one edge file gives both directions.
Each micro-batch is drawn from one graph, chosen with probability proportional to its weight; its in-batch
columns are the positives of its queries (``xmr.train.batches.make_batch``), or a sample of at most
``positives_per_query`` of them where a query has many edges (a Reuters topic has thousands of articles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances, read_instances
from xmr.errors import XMRError
from xmr.train.batches import Batch, TrainingPairs, make_batch
from xmr.train.data import split_holdout


@dataclass
class GraphSpec:
    """One task of the mixture, as a recipe writes it under ``graphs:``."""

    name: str
    train: str  # instances (queries with their target ids): xmr JSONL and the other formats xmr reads
    labels: str  # the target catalogue
    weight: float = 1.0  # sampling weight of this graph's batches
    reverse: bool = False  # targets become queries (skill -> the sentences that name it)
    max_train: int | None = None  # at most this many queries (before reversing)
    positives_per_query: int | None = None  # sample at most this many of a query's edges as batch columns


@dataclass
class Graph:
    name: str
    pairs: TrainingPairs  # queries, their positive target rows, and the target catalogue (``pairs.labels``)
    weight: float
    positives_per_query: int | None = None


def reversed_pairs(pairs: TrainingPairs, name: str) -> TrainingPairs:
    """The graph with its sides swapped: every target with at least one edge is a query, the queries are targets."""
    items = pairs.labels.items()
    sources: dict[int, list[int]] = {}
    for query, rows in enumerate(pairs.positives):
        for row in rows:
            sources.setdefault(int(row), []).append(query)
    queries = sorted(sources)
    records = [{"id": row, "text": item if isinstance(item, str) else item["text"]}
               for row, item in enumerate(pairs.queries)]
    targets = LabelCatalogue.from_records(records, source=f"{name} (the queries of {pairs.labels.source})")
    return TrainingPairs([items[row] for row in queries], [np.asarray(sources[row], dtype=np.int64) for row in queries],
                         targets)


def load_graphs(specs: list[GraphSpec], validation_size: int, seed: int,
                say: Callable[[str], None] = print) -> tuple[list[Graph], Instances | None]:
    """The graphs, and the ``validation_size`` queries held out of the first graph's file (before reversing; left
    out of every graph read from that file, so a reversed graph never sees them as targets either)."""
    if not specs:
        raise XMRError("graphs: at least one graph is needed")
    graphs, holdout = [], None
    for position, spec in enumerate(specs):
        targets = LabelCatalogue.from_file(spec.labels)
        instances = read_instances(spec.train)
        if spec.train == specs[0].train:  # the held-out queries stay out of every graph built from that file
            instances, held = split_holdout(instances, validation_size, seed)
            holdout = held if position == 0 else holdout
        if spec.max_train is not None:
            instances = instances.subset(list(range(min(spec.max_train, len(instances)))), "train")
        pairs = TrainingPairs.from_instances(instances, targets)
        if spec.reverse:
            pairs = reversed_pairs(pairs, spec.name)
        graphs.append(Graph(spec.name, pairs, spec.weight, spec.positives_per_query))
        say(f"graph {spec.name}: {len(pairs)} queries -> {len(pairs.labels)} targets "
            f"({sum(len(rows) for rows in pairs.positives)} edges), weight {spec.weight}")
    return graphs, holdout


def mixture_plan(graphs: list[Graph], batch_size: int, seed: int, epoch: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """An epoch's micro-batches: ``sum_g ceil(n_g / batch_size)`` of them, each from one graph drawn with probability
    proportional to its weight, with that graph's queries in a shuffled order (reshuffled when they run out)."""
    rng = np.random.default_rng([seed, epoch, 14])
    weights = np.array([graph.weight for graph in graphs], dtype=np.float64)
    count = sum(-(-len(graph.pairs) // batch_size) for graph in graphs)
    chosen = rng.choice(len(graphs), size=count, p=weights / weights.sum())
    orders = [rng.permutation(len(graph.pairs)) for graph in graphs]
    cursors = [0] * len(graphs)
    batches = []
    for graph in chosen:
        size = min(batch_size, len(orders[graph]))
        if cursors[graph] + size > len(orders[graph]):
            orders[graph], cursors[graph] = rng.permutation(len(orders[graph])), 0
        batches.append(orders[graph][cursors[graph]:cursors[graph] + size])
        cursors[graph] += size
    return chosen.astype(np.int64), batches


def graph_batch(graph: Graph, rows: np.ndarray, rng: np.random.Generator, all_labels: bool) -> Batch:
    """A batch of ``rows``: columns are every positive (or ``positives_per_query`` sampled ones) of each query, or
    all targets; every column that is any positive of a query is marked positive for it, never a negative."""
    cap, pairs = graph.positives_per_query, graph.pairs
    if all_labels or cap is None or all(len(pairs.positives[row]) <= cap for row in rows):
        return make_batch(pairs, rows, rng, one_positive=False, all_labels=all_labels)
    sampled = [rng.choice(pairs.positives[row], size=min(cap, len(pairs.positives[row])), replace=False)
               for row in rows]
    columns = np.unique(np.concatenate(sampled))
    positives = np.stack([np.isin(columns, pairs.positives[row]) for row in rows])
    return Batch(np.asarray(rows, dtype=np.int64), columns, positives,
                 np.searchsorted(columns, [chosen[0] for chosen in sampled]))
