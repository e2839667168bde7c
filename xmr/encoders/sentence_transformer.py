"""Text bi-encoder backed by sentence-transformers (any ST model: hub name, local folder or bundled).

Inference can run on PyTorch (default) or on ONNX Runtime, optionally int8-quantized (dynamic quantization, no
calibration data); the export, its cache and the runtime swap are :mod:`xmr.encoders.onnx_runtime`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.encoders.base import (
    DenseEncoder,
    Item,
    item_texts,
    quiet_weight_loading,
    register_encoder,
    write_encoder_config,
)
from xmr.encoders.bundled import DEFAULT_TEXT_MODEL, canonical_model_name, resolve_model_location
from xmr.encoders.fusable import IMAGE_SLOT, FusionTokens
from xmr.encoders.onnx_runtime import exported_onnx_model, require_onnx_backend, run_on_onnx
from xmr.errors import EncoderError

if TYPE_CHECKING:
    import torch

PROGRESS_THRESHOLD = 2048  # show a progress bar for encode calls at least this long
MODEL_FOLDER = "model"  # where save() puts the (fine-tuned) sentence-transformers model inside an encoder folder

BACKENDS = ("torch", "onnx")
QUANTIZE = (None, "int8")
OPENVINO_UNSUPPORTED = (
    "backend 'openvino' is not supported: optimum-intel (needed by sentence-transformers' OpenVINO backend) does "
    "not import with transformers 5.x yet, and its int8 export calibrates on a dataset downloaded from the hub"
)


@register_encoder("sentence-transformers")
class SentenceTransformerEncoder(DenseEncoder):
    """A sentence-transformers model; prompts are prepended to queries and labels respectively.

    sentence-transformers batches inputs sorted by length (little padding waste) under ``torch.inference_mode``.

    ``backend`` picks the inference runtime: ``"torch"`` (default; the only one that can train or ``save``) or
    ``"onnx"`` (ONNX Runtime, :mod:`xmr.encoders.onnx_runtime`; needs ``pip install 'xmr[onnx]'``): the model's
    transformers network is exported once (``onnx/model.onnx``) and cached, and ``quantize="int8"`` runs a
    dynamically int8-quantised copy (``onnx/model_qint8.onnx``). Tokenisation, prompts, pooling and normalisation
    stay sentence-transformers' own on either backend.

    ``backend`` and ``quantize`` are part of the encoder's identity (what an index must match): int8 vectors
    differ visibly from fp32 ones, and even fp32 ONNX vectors differ from PyTorch's in the last digits, so an index
    built with one backend refuses an encoder with another rather than mix vectors silently (search precomputed
    vectors with ``search_embeddings`` to mix on purpose). The defaults (``"torch"``, no quantization) are left out
    of the identity, so every index built before these keys existed still matches. ``backend="openvino"`` is
    refused: optimum-intel does not import with transformers 5.x, and sentence-transformers' OpenVINO int8 export
    needs a calibration dataset from the hub (not offline).
    """

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        normalize: bool = True,
        query_prompt: str = "",
        label_prompt: str = "",
        max_seq_length: int | None = None,
        batch_size: int = 32,  # sentence-transformers' default: on CPU, larger sorted batches pad more
        device: str | None = None,
        show_progress: bool | None = None,
        trust_remote_code: bool = False,
        backend: str = "torch",
        quantize: str | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        check_backend(backend, quantize)
        self.backend = backend
        self.quantize = quantize
        self.model_name = canonical_model_name(model)
        self.normalize = normalize
        self.query_prompt = query_prompt
        self.label_prompt = label_prompt
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress
        self.trust_remote_code = trust_remote_code
        location = resolve_model_location(model)
        self.onnx_file: str | None = None  # the ONNX file loaded, relative to self.onnx_root
        self.onnx_root: Path | None = None  # the model folder holding onnx/ (the model itself or a cache folder)
        if backend == "onnx":
            require_onnx_backend()
        try:
            with quiet_weight_loading():
                self.model = SentenceTransformer(location, device=device, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise EncoderError(f"cannot load sentence-transformers model {model!r} from {location}: {error}") from None
        self._adapt_model()
        if backend == "onnx":
            self.onnx_root, self.onnx_file = exported_onnx_model(self.model, self.model_name, location, quantize,
                                                                 self._export_variant())
            run_on_onnx(self.model, self.model_name, self.onnx_root / self.onnx_file, row_by_row=quantize == "int8")
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = self.model.max_seq_length
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self._dim = int(dimension())

    def _adapt_model(self) -> None:
        """Change the loaded model before it is swapped onto its backend (a subclass's hook; none here)."""

    def _export_variant(self) -> str | None:
        """How the model differs from the one at its location, for the ONNX export cache (None: it does not)."""
        return None

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, items: Sequence[Item], prompt: str) -> np.ndarray:
        texts = item_texts(items, self.model_name)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        show = self.show_progress
        if show is None:  # long runs on a terminal only; logs and CI stay readable
            show = len(texts) >= PROGRESS_THRESHOLD and sys.stderr.isatty()
        vectors = self.model.encode(
            texts,
            prompt=prompt or None,
            batch_size=self.batch_size,
            show_progress_bar=show,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, self.query_prompt)

    def encode_labels(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, self.label_prompt)

    def _require_torch(self, what: str) -> None:
        if self.backend != "torch":
            raise EncoderError(f"{what} needs backend 'torch'; this encoder runs on backend {self.backend!r}"
                               f"{' (int8)' if self.quantize else ''}: load the model with backend='torch' to train "
                               "or save it, then export again")

    def _prompt(self, side: str) -> str:
        return self.query_prompt if side == "query" else self.label_prompt

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """Training vectors through sentence-transformers' own ``preprocess(prompt=...)``, the path ``encode`` takes,
        so prompt-aware pooling (``include_prompt=False``) sees the same ``prompt_length`` in both."""
        from sentence_transformers.util import batch_to_device

        self._require_torch("training (embed)")
        features = self.model.preprocess(item_texts(items, self.model_name), prompt=self._prompt(side) or None)
        return self._sentence_embedding(batch_to_device(features, self.model.device))

    def _sentence_embedding(self, features: dict[str, Any]) -> torch.Tensor:
        """The whole module stack (transformer, pooling, dense, normalize) on ``features``, as ``encode`` runs it."""
        vectors = self.model(features)["sentence_embedding"].float()
        if self.normalize:
            import torch.nn.functional as functional

            vectors = functional.normalize(vectors, dim=-1)
        return vectors

    # ---- early fusion (xmr.encoders.fusable): ViXML's BERT-like layout, image tokens then [CLS] text [SEP] ------
    def fusion_tokens(self, text: str, side: str, images: int, image_prefix: str) -> FusionTokens:
        """``images`` slots, then the prompted text tokenised by sentence-transformers (truncated to leave room for
        the images); ``image_prefix`` is not used (ViXML's BERT layout has none). When pooling leaves the prompt
        out, the image tokens before it are left out too, so the pooled positions are the text's own."""
        if images and self._pooling_reads_first_token():
            raise EncoderError(f"model {self.model_name!r} pools the first token, which fusion makes an image "
                               "token; use a model with mean, max or last-token pooling")
        length = self.model.max_seq_length
        features = self.model.preprocess([text], prompt=self._prompt(side) or None,
                                         max_length=None if length is None else length - images)
        skip = images + int(features.get("prompt_length") or 0) if self._pooling_skips_prompt() else 0
        return FusionTokens([IMAGE_SLOT] * images + features["input_ids"][0].tolist(), pool_skip=skip)

    def input_embeddings(self) -> torch.nn.Embedding:
        self._require_torch("fusion")
        network = getattr(self.model[0], "model", None)
        if not hasattr(network, "get_input_embeddings"):
            raise EncoderError(f"model {self.model_name!r} does not start with a transformers model, so fusion "
                               "cannot give it input embeddings")
        return network.get_input_embeddings()

    def embed_inputs(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                     pool_skip: Sequence[int]) -> torch.Tensor:
        """The module stack on ``{"inputs_embeds", "attention_mask"}`` (the Transformer module forwards
        ``inputs_embeds`` to the HF model), one call per distinct ``pool_skip`` (Pooling takes one per batch)."""
        import torch

        rows_by_skip: dict[int, list[int]] = {}
        for row, skip in enumerate(pool_skip):
            rows_by_skip.setdefault(skip, []).append(row)
        parts, order = [], []
        for skip, rows in rows_by_skip.items():
            index = torch.tensor(rows, device=inputs_embeds.device)
            features = {"inputs_embeds": inputs_embeds[index], "attention_mask": attention_mask[index]}
            if skip:
                features["prompt_length"] = skip
            parts.append(self._sentence_embedding(features))
            order.extend(rows)
        vectors = torch.cat(parts)
        return vectors[torch.tensor(order, device=vectors.device).argsort()]

    def _pooling_modules(self) -> list[Any]:
        from sentence_transformers.sentence_transformer.modules import Pooling

        return [module for module in self.model if isinstance(module, Pooling)]

    def _pooling_skips_prompt(self) -> bool:
        return any(not pooling.include_prompt for pooling in self._pooling_modules())

    def _pooling_reads_first_token(self) -> bool:
        modes = [pooling.pooling_mode for pooling in self._pooling_modules()]
        return any("cls" in ((mode,) if isinstance(mode, str) else mode) for mode in modes)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        self._require_torch("training (parameter_groups)")
        return {"encoder": [parameter for parameter in self.model.parameters() if parameter.requires_grad]}

    def train_mode(self, training: bool) -> None:
        """Dropout on/off; an ONNX encoder is always in inference mode, so only ``True`` is refused there."""
        if self.backend != "torch":
            if training:
                self._require_torch("training (train_mode)")
            return
        self.model.train(training)

    def save(self, folder: str | Path) -> Path:
        """An encoder folder: ``xmr_encoder.json`` and the model (weights as safetensors) in ``model/``."""
        self._require_torch("save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with quiet_weight_loading():
            self.model.save(str(folder / MODEL_FOLDER), create_model_card=False)
        config = self.config() | {"model": MODEL_FOLDER, "device": None}
        write_encoder_config(folder, config)
        return folder

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "model": self.model_name,
            "dim": self.dim,
            "normalize": self.normalize,
            "query_prompt": self.query_prompt,
            "label_prompt": self.label_prompt,
            "max_seq_length": self.max_seq_length,
            "batch_size": self.batch_size,
            "device": self.device,
            "show_progress": self.show_progress,
            "trust_remote_code": self.trust_remote_code,
            "backend": self.backend,
            "quantize": self.quantize,
        }

    def identity(self) -> dict[str, Any]:
        """Config minus runtime keys; ``backend``/``quantize`` only when not the defaults (older indexes match)."""
        identity = super().identity()
        if identity.get("backend") == "torch":
            del identity["backend"]
        if identity.get("quantize") is None:
            identity.pop("quantize", None)
        return identity

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SentenceTransformerEncoder:
        options = dict(config)
        expected_dim = options.pop("dim", None)
        encoder = super().from_config(options)
        if expected_dim is not None and expected_dim != encoder.dim:
            raise EncoderError(
                f"model {encoder.model_name!r} gives {encoder.dim}-d vectors, config says {expected_dim}"
            )
        return encoder  # type: ignore[return-value]



# ---- backend validation ----------------------------------------------------------------------------------------
def check_backend(backend: str, quantize: str | None) -> None:
    """Refuse an unknown ``backend`` or ``quantize`` value, naming the field."""
    if backend == "openvino":
        raise EncoderError(OPENVINO_UNSUPPORTED)
    if backend not in BACKENDS:
        raise EncoderError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if quantize not in QUANTIZE:
        raise EncoderError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize is not None and backend != "onnx":
        raise EncoderError(f"quantize={quantize!r} needs backend='onnx' (backend is {backend!r})")
