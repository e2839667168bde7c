"""xmr: extreme multi-label retrieval. Build an index from a label catalogue, query top-k labels, evaluate."""

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder, load_encoder
from xmr.errors import CatalogueError, EncoderError, IndexFolderError, UnsupportedOperation, XMRError
from xmr.evaluation import evaluate
from xmr.index import LabelIndex, ShardedIndex, build_index, build_index_from_embeddings, load_index
from xmr.predictor import Predictor, load_predictor
from xmr.representations import BinaryCodes, DenseVectors, Representation, TokenVectors
from xmr.search import SearchResult

__all__ = [
    "BinaryCodes",
    "CatalogueError",
    "DenseVectors",
    "Encoder",
    "EncoderError",
    "IndexFolderError",
    "LabelCatalogue",
    "LabelIndex",
    "Predictor",
    "Representation",
    "SearchResult",
    "ShardedIndex",
    "TokenVectors",
    "UnsupportedOperation",
    "XMRError",
    "__version__",
    "build_index",
    "build_index_from_embeddings",
    "evaluate",
    "load_encoder",
    "load_index",
    "load_predictor",
]
