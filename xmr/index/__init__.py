"""Indexes: label vectors in FAISS, persisted as a self-describing folder."""

from xmr.index.label_index import LabelIndex, build_index, build_index_from_embeddings, load_index

__all__ = ["LabelIndex", "build_index", "build_index_from_embeddings", "load_index"]
