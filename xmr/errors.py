"""The exceptions xmr raises, so callers can catch xmr's own failures apart from library bugs."""


class XMRError(Exception):
    """Base class of every error xmr raises on purpose."""


class CatalogueError(XMRError, ValueError):
    """A label catalogue or data file is malformed; the message names the file and line or field."""


class EncoderError(XMRError, ValueError):
    """An encoder cannot be loaded or cannot encode the given items."""


class IndexFolderError(XMRError):
    """An index folder is missing, corrupted, or does not match what the caller expects."""


class UnsupportedOperation(XMRError):
    """The chosen FAISS index type cannot do what was asked (e.g. remove from HNSW)."""


class InvalidArgument(XMRError, ValueError):
    """A function was called with a value it cannot take (a k outside the predictions, an unknown modality)."""
