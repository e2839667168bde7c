"""The one result type every predictor returns: ranked labels per query, and optionally a predicted label set.

Scores are "higher is better" whatever produced them (cosine, inner product, agreeing hash bits, a classifier's
probability); ``score`` names which. A slot without a label (fewer labels than ``k``, or a predictor that returns
fewer) has row and id ``-1`` and a NaN score: there is no score to compare, and :attr:`found` says which slots hold
a label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xmr.catalogue import LabelCatalogue, LabelId


@dataclass
class SearchResult:
    """``rows`` int64 ``(n, k)`` catalogue rows best first (``k`` at most the number of labels), ``ids`` the
    predictor's internal label ids, ``scores`` float32 ``(n, k)``; ``sets`` (optional) the predicted label set of
    each query as catalogue rows, for set metrics (F1) of predictors that decide how many labels apply.

    Internal ids are the label's row at index creation, so for a catalogue whose ids are ``0..L-1`` in file order
    they equal the label ids; :meth:`labels` and :meth:`label_ids` always give the catalogue's own ids.
    """

    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    catalogue: LabelCatalogue
    score: str = "score"
    sets: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.ids = np.array(self.ids, dtype=np.int64)  # a copy: never the rows array some predictors pass as ids
        self.scores = np.asarray(self.scores, dtype=np.float32)
        missing = self.rows < 0
        if missing.any():  # most results fill every slot: mask only then (a single query's p50 notices)
            self.ids = np.where(missing, -1, self.ids)
            self.scores = np.where(missing, np.float32(np.nan), self.scores)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def found(self) -> np.ndarray:
        """Boolean ``(n, k)``: which slots hold a label."""
        return self.rows >= 0

    def label_ids(self, query: int) -> list[LabelId]:
        """The catalogue ids of the hits for one query."""
        return [self.catalogue.ids[row] for row in self.rows[query] if row >= 0]

    def labels(self, query: int) -> list[tuple[LabelId, str, float]]:
        """``(label_id, label_text, score)`` for each hit of one query, best first."""
        return [
            (self.catalogue.ids[row], self.catalogue.texts[row], float(score))
            for row, score in zip(self.rows[query], self.scores[query], strict=True)
            if row >= 0
        ]

    def to_records(self) -> list[list[dict[str, Any]]]:
        """JSON-ready hits: per query, a list of ``{"id", "text", "score"}``."""
        return [
            [{"id": label_id, "text": text, "score": score} for label_id, text, score in self.labels(query)]
            for query in range(len(self))
        ]
