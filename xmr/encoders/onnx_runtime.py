"""ONNX Runtime inference for a sentence-transformers model: export once, cache, run its transformer on ONNX.

Why not sentence-transformers' own ``backend="onnx"``: it loads and exports through optimum-onnx, and no optimum-onnx
release imports with transformers 5, which sentence-transformers 6 needs. So xmr exports the model's transformers
network itself with ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch and token axes; output the
last hidden state) and int8-quantises it with ONNX Runtime's ``quantize_dynamic`` (int8 weights per output channel,
activations quantised at run time, one text at a time so that a text's vector does not depend on its batch: no
calibration data). At inference the model's first module keeps
everything else (tokenisation, prompts, length-sorted batching, then sentence-transformers' own pooling, dense and
normalisation modules): only its network is swapped for an ONNX Runtime session (:func:`onnx_runtime_network`), so
pooling is never re-implemented here and ONNX fp32 gives the torch vectors to float precision.

Exports are made once and cached: inside a local model folder the user named (``<folder>/onnx/``) when it is
writable and not an installed package, else under xmr's cache root ``$XMR_CACHE/onnx/<model>-<hash of the
source>/`` (``~/.cache/xmr`` without XMR_CACHE). Files are staged in a temporary folder and renamed into place, and
``onnx/xmr_export.json`` records which weights they came from, so retraining a local model re-exports it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xmr.errors import EncoderError
from xmr.io.atomic import write_text_atomically
from xmr.io.cache import cache_path

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

ONNX_FOLDER = "onnx"  # the subfolder for ONNX files inside a model folder (the hub's convention)
ONNX_FILES = {None: "model.onnx", "int8": "model_qint8.onnx"}
EXPORT_STAMP = "xmr_export.json"  # in onnx/: which source weights each file we exported came from
EXPORT_FORMAT = 2  # bump to invalidate every cached export (2: xmr's own exporter, replacing optimum's)
OPSET = 17
NETWORK_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
HIDDEN_OUTPUT = "last_hidden_state"
INSTALL_HINT = "pip install 'xmr[onnx]'"


@functools.cache
def onnx_backend_problem() -> str | None:
    """Why the ONNX backend cannot run here (a missing package), or None."""
    for module, package in (("onnxruntime", "onnxruntime"), ("onnx", "onnx")):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed"
    return None


def require_onnx_backend() -> None:
    problem = onnx_backend_problem()
    if problem is not None:
        raise EncoderError(f"backend 'onnx' needs onnxruntime and onnx: {problem}; {INSTALL_HINT}")


def onnx_file_name(quantize: str | None) -> str:
    """The file, relative to the model folder, holding the network for this quantisation."""
    return f"{ONNX_FOLDER}/{ONNX_FILES[quantize]}"


# ---- the network on ONNX Runtime ---------------------------------------------------------------------------------
def transformer_network(model: SentenceTransformer, model_name: str) -> tuple[Any, torch.nn.Module]:
    """The model's first module and its transformers network, refused unless it maps text to the last hidden state
    (what the exporter writes and :func:`onnx_runtime_network` returns)."""
    first = model[0]
    modality = getattr(first, "modality_config", None)
    network = getattr(first, "model", None)
    if modality != {"text": {"method": "forward", "method_output_name": HIDDEN_OUTPUT}} or network is None:
        raise EncoderError(f"model {model_name!r}: backend 'onnx' runs a text transformer whose output is the last "
                           f"hidden state; this model's first module is {type(first).__name__} ({modality})")
    return first, network


def hidden_states_module(network: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module:
    """``network(**inputs).last_hidden_state`` as a module of positional tensors, the form the exporter traces."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.network(**dict(zip(names, tensors, strict=True))).last_hidden_state

    return HiddenStates()


def export_network(model: SentenceTransformer, model_name: str, folder: Path, quantize: str | None) -> list[Path]:
    """Write the fp32 network (and its int8 copy) into ``folder``; returns the files written."""
    import torch

    _, network = transformer_network(model, model_name)
    sample = model.tokenizer(["a sample text to trace", "two"], padding=True, return_tensors="pt")
    names = tuple(name for name in NETWORK_INPUTS if name in sample)
    fp32 = folder / ONNX_FILES[None]
    axes = {name: {0: "batch", 1: "tokens"} for name in (*names, HIDDEN_OUTPUT)}
    device = next(network.parameters()).device  # trace where the weights are
    was_training = network.training
    network.eval()
    try:
        with quiet_export(), torch.no_grad():
            torch.onnx.export(hidden_states_module(network, names), tuple(sample[name].to(device) for name in names),
                              str(fp32), input_names=list(names), output_names=[HIDDEN_OUTPUT], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
    finally:
        network.train(was_training)
    written = [fp32]
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = folder / ONNX_FILES["int8"]
        with quiet_export():
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        written.append(int8)
    return written


def onnx_runtime_network(path: Path, config: Any, threads: int, row_by_row: bool = False) -> torch.nn.Module:
    """A stand-in for the transformers network inside sentence-transformers' first module: the same keyword inputs,
    a ``last_hidden_state`` output, computed by an ONNX Runtime session of ``path`` on ``threads`` intra-op threads.
    ``config`` is the torch network's (the first module reads it).

    ``row_by_row`` runs each text alone, cut to its own tokens (padded positions come back as zeros, which the
    pooling masks out). A dynamically quantised network needs it: ``DynamicQuantizeLinear`` takes one activation
    scale per tensor, so in a batch every text would share the scale of the batch's largest activation, padding
    included, and a query's vector would depend on the texts it happened to be batched with (cosine 0.988-0.995 to
    the same query encoded alone, 8 PyPI summaries, MiniLM int8 at 48 tokens)."""
    import numpy as np
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        if not row_by_row:
            return session.run([HIDDEN_OUTPUT], feed)[0]
        mask = feed["attention_mask"]
        hidden = None
        for row in range(len(mask)):
            columns = np.flatnonzero(mask[row])  # its tokens, wherever the tokenizer put the padding
            row_feed = {name: values[row:row + 1, columns] for name, values in feed.items()}
            part = session.run([HIDDEN_OUTPUT], row_feed)[0]
            if hidden is None:
                hidden = np.zeros((*mask.shape, part.shape[-1]), dtype=part.dtype)
            hidden[row, columns] = part[0]
        return hidden

    class OnnxRuntimeNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config

        def forward(self, **inputs: Any) -> dict[str, torch.Tensor]:
            feed = {name: np.ascontiguousarray(inputs[name].cpu().numpy(), dtype=np.int64) for name in names}
            hidden = torch.from_numpy(run(feed))
            return {HIDDEN_OUTPUT: hidden.to(inputs["attention_mask"].device)}  # where pooling reads the mask

    return OnnxRuntimeNetwork()


def run_on_onnx(model: SentenceTransformer, model_name: str, path: Path, row_by_row: bool = False) -> None:
    """Swap the model's transformers network for the ONNX Runtime session of ``path`` (in place); ``row_by_row``
    as in :func:`onnx_runtime_network`."""
    import torch

    first, network = transformer_network(model, model_name)
    first.model = onnx_runtime_network(path, network.config, torch.get_num_threads(), row_by_row)
    first.model_forward_params = None  # the keyword filter was the torch network's signature: pass every feature


# ---- export cache ------------------------------------------------------------------------------------------------
def source_fingerprint(location: str, variant: str | None = None) -> str:
    """Hash of a model folder's JSON configs and its weight files' sizes and mtimes (cheap, changes on retraining),
    and of ``variant`` (what a derived model changes, e.g. a distilled student's layers and weights)."""
    digest = hashlib.sha256(f"xmr-onnx-export-{EXPORT_FORMAT}\n{variant or ''}\n".encode())
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


def export_root(model_name: str, location: str, fingerprint: str, own_model: bool = True) -> Path:
    """The model folder that holds (or will hold) ``onnx/``: the user's own writable folder, else a cache folder
    (always for a derived model, ``own_model=False``: its export is not the folder's model)."""
    folder = Path(location)
    own_folder = own_model and Path(model_name).is_absolute() and folder.is_dir()  # named by the user, not hub
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
    """The file exists and was exported by this exporter from these weights."""
    return (root / file_name).is_file() and read_stamp(root).get(Path(file_name).name) == fingerprint


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Hide the exporter's tracer warnings and the quantiser's advice."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxruntime", "root", "transformers")]
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


def export_onnx(model: SentenceTransformer, model_name: str, root: Path, quantize: str | None,
                fingerprint: str) -> None:
    """Export (and quantise) into a temporary folder beside ``root``, then rename into place."""
    parent = root if root.is_dir() else root.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".xmr-onnx-export-", dir=parent))
    try:
        exported = staging / ONNX_FOLDER
        exported.mkdir()
        written = export_network(model, model_name, exported, quantize)
        write_stamp(staging, {path.name: fingerprint for path in written})
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


def exported_onnx_model(model: SentenceTransformer, model_name: str, location: str,
                        quantize: str | None, variant: str | None = None) -> tuple[Path, str]:
    """The folder and file (relative to it) of ``model``'s ONNX network, exporting once when none is current.
    ``variant`` names how ``model`` differs from the model at ``location`` (None: it is that model); a variant's
    export lives in the cache, keyed by it."""
    file_name = onnx_file_name(quantize)
    fingerprint = source_fingerprint(location, variant)
    root = export_root(model_name, location, fingerprint, own_model=variant is None)
    if not is_current(root, file_name, fingerprint):
        export_onnx(model, model_name, root, quantize, fingerprint)
    return root, file_name
