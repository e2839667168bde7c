"""The one predictor interface: ``predict(items, k) -> SearchResult``, and opening any predictor folder by its kind.

Label indexes, sharded indexes, classifier heads and set decoders all implement :class:`Predictor`, so evaluation,
the CLI and the service take any of them. A folder's ``manifest.json`` says which kind it is (``kind``); a new kind
is one entry in :data:`PREDICTOR_KINDS` naming the function that opens it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.encoders.base import Item
from xmr.errors import IndexFolderError, InvalidArgument
from xmr.representations import Representation
from xmr.search import SearchResult

# manifest "kind" -> "module:function" that opens such a folder (imported on use)
PREDICTOR_KINDS: dict[str, str] = {
    "label-index": "xmr.index.label_index:load_index",
    "sharded-index": "xmr.index.shards:load_sharded_index",
    "knn-index": "xmr.index.knn:load_knn_index",
    "lexical-index": "xmr.index.lexical:load_lexical_index",
    "fused": "xmr.index.fusion:load_fused",
}


class Predictor(ABC):
    """Ranks a catalogue's labels for queries (text, or ``{"text", "image"|"images"}`` items). Predictors that encode
    queries first (indexes) are :class:`EncodedPredictor`s; evaluation then times and reuses the encoding."""

    kind: ClassVar[str]
    catalogue: LabelCatalogue
    path: Path | None = None

    @abstractmethod
    def predict(self, items: Sequence[Item] | Item, k: int = 10, **options: Any) -> SearchResult:
        """Top-``k`` labels per query, best first; ``options`` are the predictor's per-call knobs."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What reports print: ``kind``, ``path``, ``encoder`` (identity or None), ``structure``, ``params``."""

    def __len__(self) -> int:
        return len(self.catalogue)


class EncodedPredictor(Predictor):
    """A predictor that encodes queries with its ``encoder`` and then predicts from the encoding (indexes):
    ``predict(items) = predict_encoded(encode_queries(items))``; ``search``/``search_embeddings`` are the same calls
    under their index names."""

    encoder: Any  # an xmr Encoder (a property on indexes, which load it on first use)
    internal_ids: np.ndarray

    def encode_queries(self, items: Sequence[Item] | Item) -> Representation:
        return self.encoder.encode(as_items(items), "query")

    def predict(self, items: Sequence[Item] | Item, k: int = 10, **knobs: Any) -> SearchResult:
        """Top-k labels for each query (texts, or ``{"text", "image"}`` items); knobs like ``efSearch=128``."""
        return self.predict_encoded(self.encode_queries(items), k=k, **knobs)

    @abstractmethod
    def predict_encoded(self, queries: Representation | np.ndarray, k: int = 10, **knobs: Any) -> SearchResult:
        """Top-``k`` labels for already encoded queries (e.g. precomputed vectors)."""

    def search(self, queries: Sequence[Item] | Item, k: int = 10, **knobs: Any) -> SearchResult:
        return self.predict(queries, k=k, **knobs)

    def search_embeddings(self, queries: Representation | np.ndarray, k: int = 10, **knobs: Any) -> SearchResult:
        return self.predict_encoded(queries, k=k, **knobs)

    def internal_id(self, label_id: Any) -> int:
        """Internal id of a catalogue label id (what ``SearchResult.ids`` holds)."""
        return int(self.internal_ids[self.catalogue.position(label_id)])


def as_items(queries: Sequence[Item] | Item) -> list[Item]:
    """One query (a string or a mapping) or a sequence of them, as a list; a query without text or image (blank text,
    None, a number) is an error naming its position (counted from 1), since it would return arbitrary labels."""
    if isinstance(queries, (str, Mapping)):
        queries = [queries]
    elif not isinstance(queries, Sequence):
        raise InvalidArgument(f"queries must be a text, a {{'text', 'image'}} mapping or a list of them, got "
                              f"{type(queries).__name__}")
    items = list(queries)
    for position, item in enumerate(items, start=1):
        if isinstance(item, str):
            text, images = item, None
        elif isinstance(item, Mapping):
            text, images = item.get("text") or "", item.get("image") or item.get("images")
        else:
            raise InvalidArgument(f"query {position} is a {type(item).__name__}, not a text or a mapping")
        if not (isinstance(text, str) and text.strip()) and not images:
            raise InvalidArgument(f"query {position} has no text (blank) and no image")
    return items


def load_predictor(path: str | Path, **options: Any) -> Predictor:
    """Open a predictor folder of any kind (version-1 index folders are label indexes); ``options`` go to its opener
    (e.g. ``mmap=True``, ``verify=False``)."""
    from xmr.index.folder import read_manifest

    manifest = read_manifest(Path(path))
    kind = manifest.get("kind", "label-index")
    if kind not in PREDICTOR_KINDS:
        from xmr.methods import import_methods

        import_methods()  # a method's predictor kinds register when its package is imported
    if kind not in PREDICTOR_KINDS:
        raise IndexFolderError(f"{path}: unknown predictor kind {kind!r}; known: {sorted(PREDICTOR_KINDS)}")
    module, function = PREDICTOR_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), function)(path, **options)


def use_fast_queries(predictor: Predictor) -> None:
    """Switch a predictor to its folder's fast query encoder (``xmr fast-queries``); refused for kinds that have
    none, and by indexes whose folder has none."""
    if not hasattr(predictor, "use_fast_queries"):
        raise InvalidArgument(f"--fast-queries: a {predictor.kind} predictor has no fast query encoder")
    predictor.use_fast_queries()
