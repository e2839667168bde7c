"""The one search result type every index returns: top-k label ids and scores per query, best first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xmr.catalogue import LabelCatalogue, LabelId


@dataclass
class SearchResult:
    """``ids`` int64 ``(n, k)`` internal label ids and ``scores`` float32 ``(n, k)``, best first.

    Slots past the number of labels hold id ``-1`` and score ``-inf``. Internal ids are the label's row at
    index creation, so for a catalogue whose ids are ``0..L-1`` in file order they equal the label ids;
    :meth:`labels` and :meth:`label_ids` always give the catalogue's own ids.
    """

    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray  # catalogue row per slot, -1 where empty
    catalogue: LabelCatalogue

    def __len__(self) -> int:
        return len(self.ids)

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
