"""Text bi-encoder backed by sentence-transformers (any ST model: hub name, local folder or bundled).

Inference can run on PyTorch (default) or on ONNX Runtime through sentence-transformers' own ``backend="onnx"``
support, optionally int8-quantized (dynamic quantization, no calibration data). The ONNX files are exported once
with sentence-transformers' exporters and cached; see :class:`SentenceTransformerEncoder`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
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
from xmr.errors import EncoderError
from xmr.io.atomic import write_text_atomically
from xmr.io.cache import cache_path

if TYPE_CHECKING:
    import torch

PROGRESS_THRESHOLD = 2048  # show a progress bar for encode calls at least this long
MODEL_FOLDER = "model"  # where save() puts the (fine-tuned) sentence-transformers model inside an encoder folder

BACKENDS = ("torch", "onnx")
QUANTIZE = (None, "int8")
ONNX_FOLDER = "onnx"  # sentence-transformers' subfolder for ONNX files inside a model folder
ONNX_FP32_FILE = "model.onnx"
EXPORT_STAMP = "xmr_export.json"  # in onnx/: which source weights each file we exported came from
EXPORT_FORMAT = 1  # bump to invalidate every cached export
# dynamic int8 quantization presets of optimum's AutoQuantizationConfig -> file suffix (the names the hub uses)
QUANTIZED_SUFFIX = {"avx2": "quint8_avx2", "avx512_vnni": "qint8_avx512_vnni", "arm64": "qint8_arm64"}
INSTALL_HINT = "pip install 'xmr[onnx]'"
OPENVINO_UNSUPPORTED = (
    "backend 'openvino' is not supported: optimum-intel (needed by sentence-transformers' OpenVINO backend) does "
    "not import with transformers 5.x yet, and its int8 export calibrates on a dataset downloaded from the hub"
)


@register_encoder("sentence-transformers")
class SentenceTransformerEncoder(DenseEncoder):
    """A sentence-transformers model; prompts are prepended to queries and labels respectively.

    sentence-transformers batches inputs sorted by length (little padding waste) under ``torch.inference_mode``.

    ``backend`` picks the inference runtime: ``"torch"`` (default; the only one that can train or ``save``) or
    ``"onnx"`` (ONNX Runtime via sentence-transformers' ``backend="onnx"``; needs ``pip install 'xmr[onnx]'``).
    ``quantize="int8"`` (ONNX only) runs a dynamically int8-quantized copy made by sentence-transformers'
    ``export_dynamic_quantized_onnx_model`` with the optimum preset for this CPU (``avx512_vnni`` when
    ``/proc/cpuinfo`` has it, ``arm64`` on ARM, else ``avx2``): ``onnx/model_qint8_avx512_vnni.onnx``,
    ``onnx/model_qint8_arm64.onnx`` or ``onnx/model_quint8_avx2.onnx`` (fp32: ``onnx/model.onnx``).

    Exports are made once and cached: inside a local model folder the user named (``<folder>/onnx/``) when it
    is writable, otherwise (the bundled model in site-packages, hub models, read-only folders) under xmr's one
    cache root, ``$XMR_CACHE/onnx/<model>-<hash of the source>/`` (``~/.cache/xmr`` without XMR_CACHE). Files are
    staged in a temporary folder and renamed into place, and ``onnx/xmr_export.json`` records which weights they
    came from, so retrained weights in the same folder are exported again instead of silently reusing stale files.

    ``backend`` and ``quantize`` are part of the encoder's identity (what an index must match): int8 vectors
    differ visibly from fp32 ones (cosine ~0.99), and even fp32 ONNX vectors differ from PyTorch's in the last
    digits, so an index built with one backend refuses an encoder with another rather than mix vectors silently
    (search precomputed vectors with ``search_embeddings`` to mix on purpose). The defaults (``"torch"``, no
    quantization) are left out of the identity, so every index built before these keys existed still matches.
    The quantization preset (chosen per CPU) is not part of the identity: presets differ far less than int8 does
    from fp32. ``backend="openvino"`` is refused: optimum-intel does not import with transformers 5.x, and
    sentence-transformers' OpenVINO int8 export needs a calibration dataset from the hub (not offline).
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
                if backend == "torch":
                    self.model = SentenceTransformer(location, device=device, trust_remote_code=trust_remote_code)
                else:
                    self.onnx_root, self.onnx_file = exported_onnx_model(
                        self.model_name, location, quantize, device, trust_remote_code)
                    self.model = SentenceTransformer(
                        str(self.onnx_root), device=device, trust_remote_code=trust_remote_code, backend="onnx",
                        model_kwargs={"file_name": self.onnx_file})
        except (OSError, ValueError) as error:
            raise EncoderError(f"cannot load sentence-transformers model {model!r} from {location}: {error}") from None
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = self.model.max_seq_length
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self._dim = int(dimension())

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



# ---- ONNX backend: validation, export cache ---------------------------------------------------------------------
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


@functools.cache
def onnx_backend_problem() -> str | None:
    """Why sentence-transformers' ONNX backend cannot run here (a missing or incompatible package), or None."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    try:
        from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer  # noqa: F401
    except ModuleNotFoundError as error:
        return f"optimum-onnx is not installed ({error})"
    except ImportError as error:  # installed, but written for another transformers version
        from importlib.metadata import PackageNotFoundError, version

        try:
            optimum_onnx = f"optimum-onnx {version('optimum-onnx')}"
        except PackageNotFoundError:
            optimum_onnx = "optimum.onnxruntime"
        return f"{optimum_onnx} does not work with transformers {version('transformers')} ({error})"
    return None


def require_onnx_backend() -> None:
    problem = onnx_backend_problem()
    if problem is None:
        return
    if "not installed" in problem:
        raise EncoderError(f"backend 'onnx' needs onnxruntime and optimum-onnx: {problem}; {INSTALL_HINT}")
    raise EncoderError(f"backend 'onnx' cannot run: {problem}; install an optimum-onnx release that supports "
                       "this transformers version, or use backend='torch'")


@functools.cache
def quantization_preset() -> str:
    """optimum's dynamic int8 preset for this CPU: ``avx512_vnni`` if it has that, ``arm64`` on ARM, else ``avx2``."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo = ""
    return "avx512_vnni" if re.search(r"\bavx512_vnni\b", cpuinfo) else "avx2"


def onnx_file_name(quantize: str | None) -> str:
    """The file (relative to the model folder) that sentence-transformers loads for this quantization."""
    if quantize is None:
        return f"{ONNX_FOLDER}/{ONNX_FP32_FILE}"
    return f"{ONNX_FOLDER}/model_{QUANTIZED_SUFFIX[quantization_preset()]}.onnx"


def source_fingerprint(location: str) -> str:
    """Hash of a model folder's JSON configs and its weight files' sizes and mtimes (cheap, changes on retraining)."""
    digest = hashlib.sha256(f"xmr-onnx-export-{EXPORT_FORMAT}\n".encode())
    folder = Path(location)
    if not folder.is_dir():  # a hub name: its revision is not known here
        digest.update(location.encode())
        return digest.hexdigest()
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        elif path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def export_root(model_name: str, location: str, fingerprint: str) -> Path:
    """The model folder that holds (or will hold) ``onnx/``: the user's own writable folder, else a cache folder."""
    folder = Path(location)
    own_folder = Path(model_name).is_absolute() and folder.is_dir()  # a folder the user named, not bundled/hub
    installed = any(part in ("site-packages", "dist-packages") for part in folder.resolve().parts)
    if own_folder and not installed and os.access(folder, os.W_OK):
        return folder
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name).name or model_name).strip("-.")[:64] or "model"
    return cache_path(ONNX_FOLDER, f"{slug}-{fingerprint[:16]}")


def read_stamp(root: Path) -> dict[str, str]:
    try:
        stamp = json.loads((root / ONNX_FOLDER / EXPORT_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def write_stamp(root: Path, stamp: dict[str, str]) -> None:
    write_text_atomically(root / ONNX_FOLDER / EXPORT_STAMP, json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def is_current(root: Path, file_name: str, fingerprint: str) -> bool:
    """The file exists and is not a stale export (files we did not export, e.g. shipped with a model, are trusted)."""
    if not (root / file_name).is_file():
        return False
    recorded = read_stamp(root).get(Path(file_name).name)
    return recorded is None or recorded == fingerprint


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Hide the exporters' tracer warnings and sentence-transformers' "exporting, please save" advice."""
    loggers = [logging.getLogger(name) for name in ("sentence_transformers.backend", "optimum", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(location: str, root: Path, quantize: str | None, fingerprint: str, device: str | None,
                trust_remote_code: bool) -> None:
    """Export with sentence-transformers (and quantize), staged in a temporary folder, then renamed into ``root``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    parent = root if root.is_dir() else root.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".xmr-onnx-export-", dir=parent))
    try:
        with quiet_export():
            model = SentenceTransformer(location, device=device, trust_remote_code=trust_remote_code,
                                        backend="onnx", model_kwargs={"export": True})
            model.save(str(staging), create_model_card=False)  # a complete model folder with onnx/model.onnx
            if quantize is not None:
                preset = quantization_preset()
                export_dynamic_quantized_onnx_model(model, preset, str(staging), file_suffix=QUANTIZED_SUFFIX[preset])
        exported = staging / ONNX_FOLDER
        write_stamp(staging, {path.name: fingerprint for path in exported.iterdir() if path.name != EXPORT_STAMP})
        publish(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, root: Path) -> None:
    """Move a staged export into place with renames only, so a reader never sees a half-written file."""
    if not root.exists():
        with contextlib.suppress(OSError):  # lost a race to another process: merge below
            os.rename(staging, root)  # the whole cache folder at once
            return
        if not root.is_dir():
            raise EncoderError(f"cannot write the ONNX export cache {root}")
    source, target = staging / ONNX_FOLDER, root / ONNX_FOLDER
    if not target.exists():
        with contextlib.suppress(OSError):
            os.rename(source, target)
            return
    target.mkdir(exist_ok=True)
    stamp = read_stamp(root) | read_stamp(staging)
    for path in source.iterdir():
        if path.name != EXPORT_STAMP:
            os.replace(path, target / path.name)
    write_stamp(root, stamp)


def exported_onnx_model(model_name: str, location: str, quantize: str | None, device: str | None,
                        trust_remote_code: bool) -> tuple[Path, str]:
    """The model folder and ONNX file name to load, exporting (once) when no current export exists."""
    file_name = onnx_file_name(quantize)
    fingerprint = source_fingerprint(location)
    root = export_root(model_name, location, fingerprint)
    if not is_current(root, file_name, fingerprint):
        export_onnx(location, root, quantize, fingerprint, device, trust_remote_code)
    return root, file_name
