"""xmr: extreme multi-label retrieval. Build an index from a label catalogue, query top-k labels, evaluate."""

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder, load_encoder
from xmr.errors import CatalogueError, EncoderError, IndexFolderError, UnsupportedOperation, XMRError
from xmr.evaluation import evaluate
from xmr.index import LabelIndex, build_index, build_index_from_embeddings, load_index
from xmr.search import SearchResult

__all__ = [
    "CatalogueError",
    "Encoder",
    "EncoderError",
    "IndexFolderError",
    "LabelCatalogue",
    "LabelIndex",
    "SearchResult",
    "UnsupportedOperation",
    "XMRError",
    "__version__",
    "build_index",
    "build_index_from_embeddings",
    "evaluate",
    "load_encoder",
    "load_index",
]
