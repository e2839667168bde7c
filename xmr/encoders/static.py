"""Static token embeddings (model2vec) as a text encoder: a text's vector is the mean of its tokens' vectors.

No transformer runs at encoding time, only a tokenizer and a table lookup, so a query costs microseconds on CPU
instead of a MiniLM forward pass (measured: ``eval/bench/fast-queries/report.md``). The table is made from a
sentence-transformers teacher by :func:`xmr.encoders.distill.distill_static`; its vectors live in the teacher's
space, so an index built with the teacher can be searched with them (``LabelIndex.use_fast_queries``).

Files (no pickle): ``vectors`` is a safetensors file with one tensor ``embeddings`` (vocabulary x dim, float16 or
float32), ``tokenizer`` a Hugging Face ``tokenizer.json`` (data, never code). Inference is model2vec's own
``StaticModel.encode`` on those arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from xmr.encoders.base import DenseEncoder, Item, item_texts, register_encoder, write_encoder_config
from xmr.errors import EncoderError
from xmr.io.atomic import sha256_file

if TYPE_CHECKING:
    from model2vec import StaticModel

VECTORS_TENSOR = "embeddings"  # the tensor name model2vec itself uses in model.safetensors
VECTORS_FILE = "vectors.safetensors"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_MAX_LENGTH = 512  # tokens read per text (model2vec's default); static lookups make long texts cheap


@register_encoder("static-embeddings")
class StaticEmbeddingEncoder(DenseEncoder):
    """model2vec static embeddings read from ``vectors`` (safetensors) and ``tokenizer`` (tokenizer.json).

    ``distilled_from`` is the identity of the encoder the table was distilled from (None for a table of other
    origin), ``distillation`` how (corpus size, epochs); both are part of the identity, so an index refuses a
    table distilled from another encoder. The files are identified by the SHA-256 of the vectors, not their path,
    so a copied folder still matches.
    """

    runtime_keys: ClassVar[frozenset[str]] = frozenset({"batch_size", "device", "show_progress", "vectors",
                                                        "tokenizer"})

    def __init__(self, vectors: str, tokenizer: str, normalize: bool = True,
                 max_length: int | None = DEFAULT_MAX_LENGTH, distilled_from: Mapping[str, Any] | None = None,
                 distillation: Mapping[str, Any] | None = None, batch_size: int = 1024,
                 vectors_sha256: str | None = None) -> None:
        from model2vec import StaticModel
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.vectors_path, self.tokenizer_path = Path(vectors), Path(tokenizer)
        try:
            table = load_file(str(self.vectors_path))[VECTORS_TENSOR]
        except (OSError, KeyError, SafetensorError) as error:
            raise EncoderError(f"{vectors}: cannot read static embeddings (tensor {VECTORS_TENSOR!r}): "
                               f"{error}") from None
        try:
            text_tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as error:  # tokenizers raises a bare Exception on a missing or malformed file
            raise EncoderError(f"{tokenizer}: cannot read the tokenizer: {error}") from None
        self.vectors_sha256 = sha256_file(self.vectors_path)
        if vectors_sha256 is not None and vectors_sha256 != self.vectors_sha256:
            raise EncoderError(f"{vectors}: SHA-256 {self.vectors_sha256[:12]}... differs from the config's "
                               f"{vectors_sha256[:12]}...")
        try:
            self.model = StaticModel(vectors=table, tokenizer=text_tokenizer, normalize=normalize,
                                     max_length=max_length)
        except ValueError as error:  # vocabulary and table sizes differ
            raise EncoderError(f"{vectors}: {error}") from None
        self.normalize = normalize
        self.max_length = max_length
        self.distilled_from = dict(distilled_from) if distilled_from is not None else None
        self.distillation = dict(distillation) if distillation is not None else None
        self.batch_size = batch_size

    @classmethod
    def from_static_model(cls, model: StaticModel, folder: str | Path, **options: Any) -> StaticEmbeddingEncoder:
        """Write a model2vec ``StaticModel``'s table and tokenizer into ``folder`` and open them."""
        vectors, tokenizer = write_static_files(model.embedding, model.tokenizer.to_str(), Path(folder))
        return cls(str(vectors), str(tokenizer), **options)

    @property
    def dim(self) -> int:
        return int(self.model.embedding.shape[1])

    def _encode(self, items: Sequence[Item]) -> np.ndarray:
        texts = item_texts(items, "static-embeddings")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, use_multiprocessing=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items)

    def encode_labels(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items)

    def write_files(self, folder: Path, vectors_name: str, tokenizer_name: str) -> None:
        """Copy the table and tokenizer into ``folder`` under the given names (an index folder being written)."""
        write_static_files(self.model.embedding, self.model.tokenizer.to_str(), folder, vectors_name,
                           tokenizer_name)

    def save(self, folder: str | Path) -> Path:
        """An encoder folder: ``xmr_encoder.json``, ``vectors.safetensors`` and ``tokenizer.json``."""

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.write_files(folder, VECTORS_FILE, TOKENIZER_FILE)
        config = self.config() | {"vectors": VECTORS_FILE, "tokenizer": TOKENIZER_FILE}
        write_encoder_config(folder, config)
        return folder

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "vectors": str(self.vectors_path),
            "tokenizer": str(self.tokenizer_path),
            "vectors_sha256": self.vectors_sha256,
            "dim": self.dim,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "distilled_from": self.distilled_from,
            "distillation": self.distillation,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StaticEmbeddingEncoder:
        options = dict(config)
        expected_dim = options.pop("dim", None)
        encoder = super().from_config(options)
        if expected_dim is not None and expected_dim != encoder.dim:
            raise EncoderError(f"{options.get('vectors')}: the table holds {encoder.dim}-d vectors, config says "
                               f"{expected_dim}")
        return encoder  # type: ignore[return-value]


def write_static_files(table: np.ndarray, tokenizer_json: str, folder: Path, vectors_name: str = VECTORS_FILE,
                       tokenizer_name: str = TOKENIZER_FILE) -> tuple[Path, Path]:
    """``table`` as safetensors (tensor ``embeddings``) and the tokenizer JSON, in ``folder``; their paths."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vectors, tokenizer = folder / vectors_name, folder / tokenizer_name
    save_file({VECTORS_TENSOR: np.ascontiguousarray(table)}, str(vectors))
    tokenizer.write_text(tokenizer_json, encoding="utf-8")
    return vectors, tokenizer
