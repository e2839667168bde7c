"""A run's data: the label catalogue, the training pairs and the validation queries, from a recipe's ``data``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances, read_instances
from xmr.errors import XMRError
from xmr.train.batches import TrainingPairs
from xmr.train.recipe import DataSpec


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


@dataclass
class TrainingData:
    labels: LabelCatalogue
    train: Instances  # the training queries as read (after hold-out and max_train): ``evaluate``'s ``train``
    pairs: TrainingPairs  # the training queries with at least one catalogue label
    validation: Instances | None

    @classmethod
    def load(cls, spec: DataSpec, seed: int, say: Callable[[str], None] = print) -> TrainingData:
        labels = LabelCatalogue.from_file(spec.labels, image_roots=spec.image_roots)
        train, holdout = split_holdout(read_instances(spec.train, image_roots=spec.image_roots), spec.validation_size,
                                       seed)
        if spec.max_train is not None:
            train = train.subset(list(range(min(spec.max_train, len(train)))), "train")
        validation = read_instances(spec.validation, image_roots=spec.image_roots) if spec.validation else holdout
        pairs = TrainingPairs.from_instances(train, labels)
        say(f"{len(pairs)} training queries ({pairs.dropped} without a known label dropped), {len(labels)} labels"
            + (f", {len(validation)} validation queries" if validation is not None else ""))
        return cls(labels, train, pairs, validation)
