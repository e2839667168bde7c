"""Label indexes: a label store plus a pipeline of stages (candidates, re-rank), persisted as a self-describing
folder; sharded indexes over several such folders."""

from xmr.index.label_index import LabelIndex, build_index, build_index_from_embeddings, load_index
from xmr.index.shards import ShardedIndex, load_sharded_index, merge_top_k

__all__ = ["LabelIndex", "ShardedIndex", "build_index", "build_index_from_embeddings", "load_index",
           "load_sharded_index", "merge_top_k"]
