"""Evaluation and training instances: queries with their true labels, read from xmr JSONL.

xmr JSONL has one object per line: ``{"id", "text", "labels": [label ids], ...}`` (as in ../shared/data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.catalogue import LabelId, iter_jsonl
from xmr.errors import CatalogueError


@dataclass
class Instances:
    """Parallel lists: query ids, query texts, true label ids per query, and each record's other fields."""

    ids: list[Any]
    texts: list[str]
    labels: list[list[LabelId]]
    extra: list[dict[str, Any]] = field(default_factory=list)
    source: str = "<instances>"

    def __len__(self) -> int:
        return len(self.texts)


def read_instances(path: str | Path, text_field: str = "text", labels_field: str = "labels") -> Instances:
    """Read xmr JSONL instances, validating every line (errors name the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"{path}: no such data file")
    ids, texts, labels, extra = [], [], [], []
    for where, record in iter_jsonl(path):
        text = record.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise CatalogueError(f"{where}: field {text_field!r} is missing or empty")
        true_labels = record.get(labels_field)
        if not isinstance(true_labels, list) or not all(
            isinstance(label, (int, str)) and not isinstance(label, bool) for label in true_labels
        ):
            raise CatalogueError(f"{where}: field {labels_field!r} must be a list of label ids")
        ids.append(record.get("id", len(ids)))
        texts.append(text)
        labels.append(true_labels)
        extra.append({key: value for key, value in record.items() if key not in ("id", text_field, labels_field)})
    if not texts:
        raise CatalogueError(f"{path}: no instances")
    return Instances(ids, texts, labels, extra, str(path))
