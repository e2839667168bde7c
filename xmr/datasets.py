"""Labelled queries (instances) for evaluation and training, from every format XMC data comes in.

- xmr JSONL: ``{"id", "text", "labels": [label ids], ...}`` per line (as in ../shared/data).
- Extreme Classification Repository, LF raw: ``trn.json.gz``/``tst.json.gz`` lines with ``uid``, ``title``,
  ``content``, ``target_ind`` (row numbers in ``lbl.json.gz``); the catalogue is ``lbl.json.gz`` with row ids.
- Extreme Classification Repository, sparse BoW ``.txt``: header ``n d L``, then ``l1,l2 f:v f:v ...`` per line;
  it carries labels but no text, so it serves as training label counts (propensities), not as queries.
- Hugging Face ``datasets`` from local files: a ``save_to_disk`` folder, or ``.parquet``/``.arrow`` files.
- Reciprocal-pair filter files (``filter_labels_test.txt``): ``query_row label_id`` per line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xmr.catalogue import ROW_ID, LabelCatalogue, LabelId, image_paths
from xmr.errors import CatalogueError, InvalidArgument
from xmr.io.readers import iter_jsonl, text_lines


@dataclass
class Instances:
    """Parallel lists: query ids, query texts, true label ids per query, and each record's other fields."""

    ids: list[Any]
    texts: list[str]
    labels: list[list[LabelId]]
    extra: list[dict[str, Any]] = field(default_factory=list)
    source: str = "<instances>"
    images: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def items(self, modality: str = "all") -> list[Any]:
        """Queries for an encoder: ``all`` = text plus images where present, ``text`` only, or ``image`` only."""
        if modality not in ("all", "text", "image"):
            raise InvalidArgument(f"modality must be all, text or image, got {modality!r}")
        if modality == "text" or self.images is None:
            if modality == "image":
                raise CatalogueError(f"{self.source}: image-only queries asked for, but the queries have no images")
            return list(self.texts)
        if modality == "image":
            missing = [row for row, images in enumerate(self.images) if not images]
            if missing:
                raise CatalogueError(f"{self.source}: query {missing[0]} has no image for an image-only run")
            return [{"images": images} for images in self.images]
        return [{"text": text, "images": images} if images else text
                for text, images in zip(self.texts, self.images, strict=True)]

    def subset(self, rows: list[int], name: str) -> Instances:
        """Only the given rows (e.g. one ``subset`` of the ESCO benchmark)."""
        return Instances([self.ids[r] for r in rows], [self.texts[r] for r in rows],
                         [self.labels[r] for r in rows], [self.extra[r] for r in rows] if self.extra else [],
                         f"{self.source}[{name}]", [self.images[r] for r in rows] if self.images else None)


def _is_lf_raw(path: Path) -> bool:
    for _, record in iter_jsonl(path):
        return "target_ind" in record and "uid" in record
    return False


def read_instances(path: str | Path, text_field: str = "text", labels_field: str = "labels",
                   image_roots: Sequence[str | Path] = ()) -> Instances:
    """Read labelled queries, choosing the reader from the file (see the module docstring for formats)."""
    path = Path(path)
    if path.is_dir():
        return read_hf_dataset(path, text_field=text_field, labels_field=labels_field)
    if not path.is_file():
        raise CatalogueError(f"{path}: no such data file")
    name = path.name.lower()
    if name.endswith((".parquet", ".arrow")):
        return read_hf_dataset(path, text_field=text_field, labels_field=labels_field)
    if name.endswith((".txt", ".txt.gz")):
        raise CatalogueError(f"{path}: a sparse BoW file has labels but no query text; use it as --train only")
    if _is_lf_raw(path):
        return read_xmc_lf(path)
    return _read_xmr_jsonl(path, text_field, labels_field, image_roots)


def _check_labels(value: Any, where: str, labels_field: str) -> list[LabelId]:
    if not isinstance(value, list) or not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in value):
        raise CatalogueError(f"{where}: field {labels_field!r} must be a list of label ids")
    return value


def _read_xmr_jsonl(path: Path, text_field: str, labels_field: str, image_roots: Sequence[str | Path]) -> Instances:
    ids, texts, labels, extra, images = [], [], [], [], []
    for where, record in iter_jsonl(path):
        text = record.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise CatalogueError(f"{where}: field {text_field!r} is missing or empty")
        ids.append(record.get("id", len(ids)))
        texts.append(text)
        labels.append(_check_labels(record.get(labels_field), where, labels_field))
        images.append(image_paths(record, "image", where, path.parent, image_roots))
        extra.append({key: value for key, value in record.items()
                      if key not in ("id", text_field, labels_field, "image", "images")})
    if not texts:
        raise CatalogueError(f"{path}: no instances")
    return Instances(ids, texts, labels, extra, str(path), images if any(images) else None)


def read_xmc_lf(path: str | Path, use_content: bool = False) -> Instances:
    """LF raw split (``tst.json.gz``): text = ``title`` (plus ``content`` when asked), labels = ``target_ind``."""
    path = Path(path)
    ids, texts, labels = [], [], []
    for where, record in iter_jsonl(path):
        title = record.get("title")
        if not isinstance(title, str):
            raise CatalogueError(f"{where}: field 'title' is missing")
        text = f"{title} {record.get('content', '')}".strip() if use_content else title
        ids.append(record.get("uid", len(ids)))
        texts.append(text)
        labels.append(_check_labels(record.get("target_ind"), where, "target_ind"))
    return Instances(ids, texts, labels, [], str(path))


def read_xmc_lf_labels(path: str | Path) -> LabelCatalogue:
    """LF raw label file (``lbl.json.gz``): ids are row numbers, as ``target_ind`` refers to them."""
    return LabelCatalogue.from_file(path, id_field=ROW_ID, text_field="title")


def read_bow_labels(path: str | Path) -> sp.csr_array:
    """Label matrix ``(n, L)`` of a sparse BoW file (header ``n d L``; features are skipped)."""
    path = Path(path)
    lines = text_lines(path)
    header = next(lines, (1, ""))[1].split()
    if len(header) != 3 or not all(part.isdigit() for part in header):
        raise CatalogueError(f"{path}:1: expected the header 'n_points n_features n_labels'")
    n, _, n_labels = (int(part) for part in header)
    indptr, indices = [0], []
    for line_number, line in lines:
        first = line.split(" ", 1)[0].strip() if not line.startswith(" ") else ""
        if first and ":" not in first:
            try:
                row = [int(label) for label in first.split(",")]
            except ValueError:
                raise CatalogueError(f"{path}:{line_number}: bad label list {first!r}") from None
            if min(row) < 0 or max(row) >= n_labels:
                raise CatalogueError(f"{path}:{line_number}: label id outside 0..{n_labels - 1}")
            indices.extend(row)
        indptr.append(len(indices))
    if len(indptr) - 1 != n:
        raise CatalogueError(f"{path}: header says {n} points, the file has {len(indptr) - 1}")
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_array((data, np.array(indices, dtype=np.int64), np.array(indptr)), shape=(n, n_labels))


def read_hf_dataset(path: str | Path, split: str | None = None, text_field: str = "text",
                    labels_field: str = "labels") -> Instances:
    """Instances from Hugging Face ``datasets``: a ``save_to_disk`` folder or local parquet/arrow/json files."""
    try:
        import datasets
    except ImportError:
        raise CatalogueError(f"{path}: reading Hugging Face datasets needs `pip install datasets`") from None
    path = Path(path)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    else:
        builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix, "json")
        loaded = datasets.load_dataset(builder, data_files=str(path))
    if isinstance(loaded, datasets.DatasetDict):
        chosen = split or ("test" if "test" in loaded else next(iter(loaded)))
        loaded = loaded[chosen]
    missing = [name for name in (text_field, labels_field) if name not in loaded.column_names]
    if missing:
        raise CatalogueError(f"{path}: unknown column(s) {missing}; the dataset has {loaded.column_names}")
    texts, labels = loaded[text_field], loaded[labels_field]
    for row, (text, label_list) in enumerate(zip(texts, labels, strict=True)):
        where = f"{path}: row {row}"
        if not isinstance(text, str) or not text.strip():
            raise CatalogueError(f"{where}: field {text_field!r} is missing or empty")
        _check_labels(label_list, where, labels_field)
    ids = loaded["id"] if "id" in loaded.column_names else list(range(len(texts)))
    return Instances(list(ids), list(texts), [list(x) for x in labels], [], str(path))


def read_label_lists(path: str | Path) -> list[list[LabelId]]:
    """True label lists of any supported file, including sparse BoW (used for training label counts)."""
    path = Path(path)
    if path.name.lower().endswith((".txt", ".txt.gz")):
        matrix = read_bow_labels(path)
        return [matrix.indices[matrix.indptr[i]:matrix.indptr[i + 1]].tolist() for i in range(matrix.shape[0])]
    return read_instances(path).labels


def read_filter_pairs(path: str | Path) -> dict[int, set[int]]:
    """Reciprocal-pair filter: query row -> label ids to drop from both predictions and truth."""
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"{path}: no such filter file")
    pairs: dict[int, set[int]] = {}
    for line_number, line in text_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not all(part.lstrip("-").isdigit() for part in parts):
            raise CatalogueError(f"{path}:{line_number}: expected 'query_row label_id', got {line.strip()!r}")
        pairs.setdefault(int(parts[0]), set()).add(int(parts[1]))
    return pairs
