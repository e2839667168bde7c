"""Predictor kind ``seq2set``: a trained Seq2Set network answering ``predict(items, k)`` with the generated label set
of each query (``SearchResult.sets``) and a ranked list, from a folder written atomically.

Folder (``xmr.index.folder`` format 2, manifest checksums verified on load)::

    manifest.json         kind "seq2set", encoder identity, network config, decoding settings, labels, files
    weights.safetensors   the network's parameters
    labels.parquet        the catalogue
    shortlist/            (shortlisted models) the label index giving each query's candidates; its manifest's
                          SHA-256 is recorded in this manifest, so a swapped index is refused
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder, load_encoder
from xmr.encoders.base import Item
from xmr.errors import IndexFolderError
from xmr.index import LabelIndex, load_index
from xmr.index.folder import read_manifest, verify_files, write_index_folder
from xmr.index.label_index import asks_for_remote_code
from xmr.io.atomic import recover
from xmr.predictor import Predictor, as_items
from xmr.search import SearchResult
from xmr.seq2set.decoding import sequence_outputs, threshold_outputs
from xmr.seq2set.model import Seq2SetNet
from xmr.seq2set.shortlist import retrieve
from xmr.seq2set.tokens import EncodedTexts, encode_texts

KIND = "seq2set"
WEIGHTS = "weights.safetensors"
LABELS = "labels.parquet"
SHORTLIST = "shortlist"
MODELS = ("otseq2set", "mlc2seq", "bce")


class Seq2SetPredictor(Predictor):
    """``decoding``: ``model`` (otseq2set | mlc2seq | bce), ``steps`` (decoder steps T), ``shortlist`` (S, 0: all
    labels), ``threshold`` (the BCE head's set threshold)."""

    kind = KIND

    def __init__(self, net: Seq2SetNet, decoding: dict[str, Any], catalogue: LabelCatalogue, encoder: Encoder,
                 index: LabelIndex | None = None, path: Path | None = None, cache_token_states: bool = False,
                 batch_size: int = 64) -> None:
        if decoding["model"] not in MODELS:
            raise IndexFolderError(f"{path}: decoding.model {decoding['model']!r} is not one of {MODELS}")
        if decoding.get("shortlist", 0) and index is None:
            raise IndexFolderError(f"{path}: a shortlisted seq2set model needs its shortlist index")
        self.net, self.decoding, self.catalogue = net, dict(decoding), catalogue
        self.encoder, self.index = encoder, index
        self.path, self.cache_token_states, self.batch_size = path, cache_token_states, batch_size
        self.net.eval()

    # ---- prediction ------------------------------------------------------------------------------------------------
    def candidates(self, encoded: EncodedTexts, items: Sequence[Item]) -> np.ndarray | None:
        """Shortlist rows ``(n, S)``; the index searches the pooled vectors of the same forward pass when it was
        built with this encoder, else encodes the queries itself."""
        size = int(self.decoding.get("shortlist", 0))
        if not size:
            return None
        if self.index.manifest["encoder"] == self.encoder.identity():
            return retrieve(self.index, encoded.pooled, size)
        return self.index.predict(list(items), k=size).rows

    @torch.no_grad()
    def outputs(self, encoded: EncodedTexts, shortlist: np.ndarray | None,
                k: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Rows, scores and sets for already encoded queries (what validation calls on cached token states)."""
        rows_parts, score_parts, sets = [], [], []
        model = self.decoding["model"]
        for start in range(0, len(encoded), self.batch_size):
            block = slice(start, start + self.batch_size)
            source, mask = source_tensors(self.net, encoded.take(block))
            short = None if shortlist is None else torch.from_numpy(shortlist[block])
            if model == "bce":
                query = self.net.head(source, mask)
                columns = torch.arange(self.net.n_labels)[None, :] if short is None else short
                logits = torch.einsum("bd,bcd->bc", query, self.net.head_labels(columns).expand(
                    len(query), -1, -1))
                rows, scores, found = threshold_outputs(logits, short, k, float(self.decoding["threshold"]))
            else:
                log_probs = self.net.decode(source, mask, int(self.decoding["steps"]), short)
                rows, scores, found = sequence_outputs(log_probs, short, self.net.empty, k,
                                                       stop_at_end=model == "mlc2seq")
            rows_parts.append(rows)
            score_parts.append(scores)
            sets.extend(found)
        return np.concatenate(rows_parts), np.concatenate(score_parts), sets

    def predict(self, items: Sequence[Item] | Item, k: int = 10, **options: Any) -> SearchResult:
        items = as_items(items)
        keep = self.net.source == "frozen"
        encoded = encode_texts(self.encoder, items, keep_states=keep, cache=self.cache_token_states)
        rows, scores, sets = self.outputs(encoded, self.candidates(encoded, items), k)
        if rows.shape[1] < k:
            pad = ((0, 0), (0, k - rows.shape[1]))
            rows, scores = np.pad(rows, pad, constant_values=-1), np.pad(scores, pad, constant_values=np.nan)
        return SearchResult(rows, scores, rows, self.catalogue, score="max step probability"
                            if self.decoding["model"] != "bce" else "probability", sets=sets)

    def describe(self) -> dict[str, Any]:
        size = int(self.decoding.get("shortlist", 0))
        structure = (f"{self.decoding['model']} ({self.net.source} source, {self.net.hidden}-d GRU, "
                     f"{self.decoding['steps']} steps) over " + (f"a {size}-label shortlist" if size else
                                                                 f"all {len(self.catalogue)} labels"))
        return {"kind": self.kind, "path": str(self.path) if self.path else None, "encoder": self.encoder.identity(),
                "structure": structure, "params": dict(self.decoding), "labels": len(self.catalogue)}

    # ---- folder ----------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the predictor folder atomically (replacing an older xmr folder at ``path``)."""
        target = Path(path)

        def write_files(folder: Path) -> dict[str, Any]:
            save_file({name: value.detach().contiguous() for name, value in self.net.state_dict().items()},
                      folder / WEIGHTS)
            pq.write_table(self.catalogue.to_arrow(), folder / LABELS)
            body = {"kind": KIND, "xmr_version": __version__, "encoder": self.encoder.identity(),
                    "network": self.net.config, "decoding": self.decoding,
                    "labels": {"file": LABELS, "count": len(self.catalogue), "source": self.catalogue.source}}
            if self.index is not None and self.decoding.get("shortlist", 0):
                self.index.save(folder / SHORTLIST)
                body["shortlist_index"] = {"folder": SHORTLIST,
                                           "manifest_sha256": self.index.manifest["manifest_sha256"]}
            return body

        write_index_folder(target, write_files)
        self.path = target
        return target


def source_tensors(net: Seq2SetNet, encoded: EncodedTexts) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's source input: token ids (BiGRU) or token states (frozen), and the mask."""
    mask = torch.from_numpy(np.ascontiguousarray(encoded.mask))
    if net.source == "bigru":
        return torch.from_numpy(np.ascontiguousarray(encoded.ids)), mask
    return torch.from_numpy(np.ascontiguousarray(encoded.states)).float(), mask


def load_seq2set(path: str | Path, verify: bool = True, cache_token_states: bool = False,
                 trust_remote_code: bool = False, device: str | None = None, **options: Any) -> Seq2SetPredictor:
    """Open a ``seq2set`` predictor folder (``load_predictor`` calls this for the kind; ``mmap`` and other index
    options do not apply). An encoder config asking for ``trust_remote_code`` is refused unless the caller allows
    it, as for label indexes."""
    path = Path(path)
    recover(path)
    manifest = read_manifest(path)
    if manifest.get("kind") != KIND:
        raise IndexFolderError(f"{path}: a {manifest.get('kind')!r} folder, not a seq2set predictor")
    for name, kind in (("network", dict), ("decoding", dict), ("encoder", dict), ("labels", dict), ("files", dict)):
        if not isinstance(manifest.get(name), kind):
            raise IndexFolderError(f"{path}: field {name!r} is missing or not a JSON object")
    if WEIGHTS not in manifest["files"] or LABELS not in manifest["files"]:
        raise IndexFolderError(f"{path}: the manifest lists no checksum for {WEIGHTS} and {LABELS}")
    verify_files(path, manifest, checksums=verify)
    catalogue = LabelCatalogue.from_arrow(pq.read_table(path / LABELS), source=str(path / LABELS))
    net = Seq2SetNet(**manifest["network"])
    try:
        net.load_state_dict(load_file(path / WEIGHTS))
    except RuntimeError as error:
        raise IndexFolderError(f"{path / WEIGHTS}: does not fit the network in the manifest: {error}") from None
    index = None
    if "shortlist_index" in manifest:
        index = load_index(path / SHORTLIST, verify=verify, trust_remote_code=trust_remote_code)
        if index.manifest.get("manifest_sha256") != manifest["shortlist_index"].get("manifest_sha256"):
            raise IndexFolderError(f"{path / SHORTLIST}: not the shortlist index this predictor was saved with")
    if asks_for_remote_code(manifest["encoder"]) and not trust_remote_code:
        raise IndexFolderError(f"{path}: its encoder config sets trust_remote_code; open it with "
                               "trust_remote_code=True only if you trust where the folder came from")
    encoder = load_encoder(manifest["encoder"], **({"device": device} if device else {}))
    return Seq2SetPredictor(net, manifest["decoding"], catalogue, encoder, index, path, cache_token_states)
