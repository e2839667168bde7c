"""Channel fusion: several predictors over one catalogue (dense label vectors, instance-kNN, lexical) as one ranking.

Each channel returns its top ``depth`` labels per query; its scores are min-max normalised per query over that list
(best -> 1, the last listed -> ``FLOOR``; a label outside it counts 0), so channels on different scales (cosines, vote
shares, TF-IDF cosines) add up; the fused score is the weighted sum. The weights are chosen on a validation split
by :func:`choose_weights` (a grid over the simplex, objective the mean of P@1 and PSP@1, so the head and the tail
both count) and recorded in the manifest with the validation metrics of every channel alone and fused.

Channels that share an encoder (a dense label index and a kNN index over the same MiniLM) get the queries encoded
once per call. Folder (``kind: "fused"``)::

    manifest.json      {"kind": "fused", "channels": [{"name", "path", "weight", "manifest_sha256"}], "depth", ...}
    channels/<name>/   each channel's own predictor folder (label-index, knn-index, lexical-index, ...)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from xmr import metrics as m
from xmr._version import __version__
from xmr.encoders.base import Item
from xmr.errors import IndexFolderError, InvalidArgument
from xmr.evaluation import ranking_metrics
from xmr.index.folder import read_manifest, refuse_foreign, write_manifest
from xmr.io.atomic import recover, write_folder_atomically
from xmr.predictor import EncodedPredictor, Predictor, as_items, load_predictor
from xmr.search import SearchResult

KIND = "fused"
CHANNELS_FOLDER = "channels"
DEPTH = 100
FLOOR = 0.1  # normalised score of the last label a channel lists


def normalised(result: SearchResult) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of one channel with scores min-max scaled per query over its list onto
    ``[FLOOR, 1]`` (a listed label always counts more than an unlisted one, which counts 0; a list whose scores are
    all equal scores 1)."""
    found = result.found
    scores = np.where(found, result.scores, 0.0).astype(np.float64)
    top = np.max(np.where(found, scores, -np.inf), axis=1, keepdims=True)
    bottom = np.min(np.where(found, scores, np.inf), axis=1, keepdims=True)
    span = top - bottom
    flat = ~np.isfinite(span) | (span <= 0)
    scaled = np.where(flat, 1.0, FLOOR + (1 - FLOOR) * (scores - np.where(flat, 0, bottom)) / np.where(flat, 1, span))
    return result.rows, np.where(found, scaled, 0.0)


def candidate_table(results: Sequence[SearchResult]) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the union of the channels' candidates ``(n, U)`` (-1 padded) and each channel's normalised score
    of each candidate ``(n, U, channels)`` (0 where the channel did not list it)."""
    parts = [normalised(result) for result in results]
    rows = np.concatenate([part[0] for part in parts], axis=1)
    n, width = rows.shape
    order = np.argsort(rows, axis=1, kind="stable")
    sorted_rows = np.take_along_axis(rows, order, 1)
    first = np.ones_like(sorted_rows, dtype=bool)
    first[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    first &= sorted_rows >= 0
    slot = np.cumsum(first, axis=1) - 1  # the union position of every (sorted) entry
    union = np.full((n, width), -1, dtype=np.int64)
    owner = np.repeat(np.arange(n)[:, None], width, 1)
    union[owner[first], slot[first]] = sorted_rows[first]
    table = np.zeros((n, width, len(results)))
    offsets = np.cumsum([0, *(part[0].shape[1] for part in parts)])
    channel_of = np.searchsorted(offsets, order, side="right") - 1
    valid = sorted_rows >= 0
    scores = np.concatenate([part[1] for part in parts], axis=1)
    table[owner[valid], slot[valid], channel_of[valid]] = np.take_along_axis(scores, order, 1)[valid]
    return union, table


def fuse_table(union: np.ndarray, table: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows and fused scores of a candidate table under ``weights``."""
    fused = np.where(union >= 0, table @ weights, -np.inf)
    k = min(k, fused.shape[1])
    top = np.argpartition(-fused, k - 1, axis=1)[:, :k]
    values, rows = np.take_along_axis(fused, top, 1), np.take_along_axis(union, top, 1)
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -values), axis=1)  # ties: lower row
    values, rows = np.take_along_axis(values, order, 1), np.take_along_axis(rows, order, 1)
    rows[~np.isfinite(values)] = -1
    return rows, values


def padded(rows: np.ndarray, width: int) -> np.ndarray:
    """``rows`` cut or padded with -1 to ``width`` columns (metrics at k need k columns)."""
    return np.pad(rows[:, :width], ((0, 0), (0, max(0, width - rows.shape[1]))), constant_values=-1)


def objective(metrics: Mapping[str, float]) -> float:
    """What the weights maximise: the mean of P@1 (head) and PSP@1 (tail)."""
    return 0.5 * (metrics["P@1"] + metrics["PSP@1"])


def objective_of(rows: np.ndarray, truth: list[np.ndarray], inverse_propensity: np.ndarray) -> float:
    """:func:`objective` of a ranking, computing only its two metrics (a grid point costs ~1/7 of the full
    :func:`~xmr.evaluation.ranking_metrics`, which dominated the search on 2,000 validation queries)."""
    return objective({"P@1": m.precision_at_k(rows, truth, 1),
                      "PSP@1": m.psprecision_at_k(rows, truth, inverse_propensity, 1)})


def choose_weights(results: Mapping[str, SearchResult], truth: list[np.ndarray], inverse_propensity: np.ndarray,
                   step: float = 0.1) -> dict[str, Any]:
    """Grid search of channel weights on the simplex (multiples of ``step``) on validation results; returns the
    weights, the objective and every channel's validation metrics alone and fused."""
    names = list(results)
    union, table = candidate_table([results[name] for name in names])
    ks = (1, 3, 5)
    units = round(1 / step)
    best: tuple[float, tuple[int, ...]] | None = None
    for combination in itertools.product(range(units + 1), repeat=len(names)):
        if sum(combination) != units:
            continue
        rows, _ = fuse_table(union, table, np.array(combination) / units, 5)
        value = objective_of(padded(rows, 5), truth, inverse_propensity)
        if best is None or value > best[0] + 1e-12:
            best = (value, combination)
    assert best is not None
    weights = {name: share / units for name, share in zip(names, best[1], strict=True)}
    alone = {name: ranking_metrics(padded(results[name].rows, 5), truth, ks, inverse_propensity) for name in names}
    rows, _ = fuse_table(union, table, np.array([weights[name] for name in names]), 5)
    return {"weights": weights, "objective": "mean(P@1, PSP@1)", "value": best[0], "step": step,
            "validation": {"fused": ranking_metrics(padded(rows, 5), truth, ks, inverse_propensity), **alone}}


class FusedPredictor(Predictor):
    """Weighted fusion of channel predictors over the same catalogue (see the module docstring)."""

    kind = KIND

    def __init__(self, channels: Mapping[str, Predictor], weights: Mapping[str, float], depth: int = DEPTH,
                 selection: Mapping[str, Any] | None = None, path: Path | None = None) -> None:
        if not channels or set(channels) != set(weights):
            raise InvalidArgument(f"fusion needs a weight per channel: channels {sorted(channels)}, weights "
                                  f"{sorted(weights)}")
        first = next(iter(channels.values())).catalogue
        for name, channel in channels.items():
            if list(channel.catalogue.ids) != list(first.ids):
                raise InvalidArgument(f"channel {name!r} ranks a different catalogue than the others")
        self.channels = dict(channels)
        self.weights = {name: float(weights[name]) for name in channels}
        self.depth = int(depth)
        self.selection = dict(selection or {})
        self.catalogue = first
        self.path = path

    def channel_results(self, items: Sequence[Item] | Item, depth: int | None = None,
                        encode: Callable[[EncodedPredictor, list[Item]], Any] | None = None) -> dict[str, SearchResult]:
        """Every channel's top ``depth`` for the queries; channels with the same encoder share one encoding
        (``encode(channel, items)``, default ``channel.encode_queries``: e.g. a cached encoding)."""
        items = as_items(items)
        encoded: dict[str, Any] = {}
        results = {}
        for name, channel in self.channels.items():
            if isinstance(channel, EncodedPredictor):
                key = json.dumps(channel.encoder.identity(), sort_keys=True, default=str)
                if key not in encoded:
                    encoded[key] = encode(channel, items) if encode else channel.encode_queries(items)
                results[name] = channel.predict_encoded(encoded[key], k=depth or self.depth)
            else:
                results[name] = channel.predict(items, k=depth or self.depth)
        return results

    def predict(self, items: Sequence[Item] | Item, k: int = 10, **options: Any) -> SearchResult:
        if options:
            raise InvalidArgument(f"a fused predictor has no per-call knobs, got {sorted(options)}")
        return self.fuse(self.channel_results(items), k)

    def fuse(self, results: Mapping[str, SearchResult], k: int = 10) -> SearchResult:
        """The fused top-``k`` of channel results (as :meth:`channel_results` returns them)."""
        names = list(self.channels)
        union, table = candidate_table([results[name] for name in names])
        rows, scores = fuse_table(union, table, np.array([self.weights[name] for name in names]), k)
        return SearchResult(ids=rows, scores=scores, rows=rows, catalogue=self.catalogue, score="fused")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path) if self.path else None, "encoder": None,
                "structure": " + ".join(f"{self.weights[n]:.2f} x {c.kind} {n}" for n, c in self.channels.items()),
                "params": {"depth": self.depth}, "labels": len(self)}

    def save(self, path: str | Path) -> Path:
        """``path/manifest.json`` and each channel as ``path/channels/<name>`` (its own folder and checksums)."""
        path = Path(path)

        def write(folder: Path) -> None:
            entries = []
            for name, channel in self.channels.items():
                relative = f"{CHANNELS_FOLDER}/{name}"
                channel.save(folder / relative)
                entries.append({"name": name, "path": relative, "kind": channel.kind, "weight": self.weights[name],
                                "manifest_sha256": read_manifest(folder / relative)["manifest_sha256"]})
            write_manifest(folder, {"kind": KIND, "xmr_version": __version__,
                                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    "channels": entries, "depth": self.depth, "normalisation": "min-max per query",
                                    "selection": self.selection})

        refuse_foreign(path)
        write_folder_atomically(path, write)
        for name, channel in self.channels.items():
            channel.path = path / CHANNELS_FOLDER / name
        self.path = path
        return path


def load_fused(path: str | Path, **options: Any) -> FusedPredictor:
    """Open a folder written by :meth:`FusedPredictor.save` (each channel checked against its recorded digest)."""
    path = Path(path)
    recover(path)
    manifest = read_manifest(path)
    entries = manifest.get("channels")
    if manifest.get("kind") != KIND or not isinstance(entries, list) or not entries:
        raise IndexFolderError(f"{path}: a fused manifest lists its channels under 'channels'")
    channels, weights = {}, {}
    for entry in entries:
        folder = (path / entry["path"]).resolve()
        if path.resolve() not in folder.parents:
            raise IndexFolderError(f"{path}: channel path {entry['path']!r} leaves the folder")
        if read_manifest(folder).get("manifest_sha256") != entry.get("manifest_sha256"):
            raise IndexFolderError(f"{path}: channel {entry['name']} is not the one this folder was saved with")
        channels[entry["name"]] = load_predictor(folder, **options)
        weights[entry["name"]] = float(entry["weight"])
    return FusedPredictor(channels, weights, int(manifest.get("depth", DEPTH)), manifest.get("selection"), path)


def propensities(train_rows: list[np.ndarray], n_labels: int) -> np.ndarray:
    """Inverse propensities from training label rows (Jain et al., xmr's default A/B) for the PSP@1 objective."""
    return m.inverse_propensity(train_rows, n_labels, *m.PROPENSITY_PRESETS["default"])
