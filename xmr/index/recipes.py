"""Index recipes: a FAISS factory plus its build and search knobs, as named presets, YAML files, or ``auto``.

A recipe is data; the presets ship inside the package (``xmr/index/presets/*.yaml``, so ``--recipe hnsw32`` works
from an installed wheel anywhere), and any YAML file of the same shape is a recipe too::

    name: hnsw32
    factory: HNSW32                    # any faiss.index_factory string; {nlist}, {nlist_lean}, {nlist_sqrt},
                                       # {coarse}, {m}, {m4} filled in
    build: {efConstruction: 200, cluster_layout: 1000}  # graph knobs; cluster_layout: store the vectors by
                                       # k-means clusters of ~1,000 labels (faiss_ops.store_by_cluster)
    search: {efSearch: 128}            # defaults stored in the manifest; every search may override them;
                                       # {nprobe_deep} (an eighth of the IVF lists, at least 256) filled in
    rerank: 0                          # > 0: re-score that many candidates exactly from the stored float32 vectors

``auto`` picks one from the label count, the dimension, a memory budget and a target recall, and says why; the
reason is written into the manifest. Knob values for a target recall come from calibration on the built index
(``calibrate``), not from a table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from faiss.contrib.factory_tools import get_code_size

from xmr.errors import XMRError

PRESET_FOLDER = resources.files("xmr.index") / "presets"
EXACT_UP_TO = 50_000  # labels: below this, exact search is fast enough (< ~5 ms per query on one core at 384-d)
FASTSCAN_UP_TO = 1_000_000  # labels: fast-scan IVF measured fastest at 50k-723k; its scan grows ~sqrt(n), HNSW's ~log n
ID_BYTES = 8  # every xmr index stores an int64 id per vector
SEARCH_TEMPLATES = ("{nprobe_deep}",)  # search knob values a recipe may leave to the catalogue's size
CENTROID_SHARE = 1 / 16  # {nlist_lean}, {coarse}: the IVF coarse stage's memory at most this share of the codes
BLAS_WORKSPACE = 3.4e6  # bytes FAISS's BLAS path keeps resident after a Flat quantizer's batched search (at 50k)


@dataclass(frozen=True)
class IndexRecipe:
    """What to build and how to search it; ``reason`` says why ``auto`` chose it."""

    name: str
    factory: str
    build: dict[str, int] = field(default_factory=dict)
    search: dict[str, int | str] = field(default_factory=dict)  # str: a SEARCH_TEMPLATES entry
    rerank: int = 0
    reason: str = ""

    def resolved(self, n_labels: int, dim: int) -> IndexRecipe:
        """The recipe with ``{nlist}`` (IVF lists, ~4 sqrt(n)), ``{nlist_lean}`` (as many, fewer where the centroids
        would weigh on small codes: :func:`lean_ivf_lists`), ``{nlist_sqrt}`` (~sqrt(n): fewer, longer lists for
        fast-scan codes, which are cheap to scan), ``{coarse}`` (``(SQfp16)``: float16 centroids, scanned without
        FAISS's BLAS path, where its resident workspace would exceed ``CENTROID_SHARE`` of the codes; else empty, a
        float32 quantizer searched through BLAS), ``{m}`` (8-bit PQ sub-quantizers, dim/4) and ``{m4}`` (4-bit fast-scan
        sub-quantizers, dim/2) filled in; ``{m}`` 8-bit and ``{m4}`` 4-bit codes both take dim/4 bytes. Search knobs
        written ``{nprobe_deep}`` become :func:`deep_probes` of the resolved factory."""
        knobs = {"nlist": ivf_lists(n_labels), "nlist_sqrt": ivf_lists(n_labels, lists_per_sqrt=1),
                 "m": pq_codes(dim, 4), "m4": pq_codes(dim, 2)}
        if "{coarse}" in self.factory:
            codes = bytes_per_vector(self.factory.format(nlist_lean=1, coarse="", **knobs), dim) - ID_BYTES
            knobs["coarse"] = "(SQfp16)" if BLAS_WORKSPACE > CENTROID_SHARE * codes * n_labels else ""
        if "{nlist_lean}" in self.factory:
            probe = self.factory.format(nlist_lean=1, **knobs)
            knobs["nlist_lean"] = lean_ivf_lists(n_labels, bytes_per_vector(probe, dim) - ID_BYTES,
                                                 centroid_bytes(probe, dim))
        factory = self.factory.format(**knobs)
        search = {name: int(value.format(nprobe_deep=deep_probes(factory))) if isinstance(value, str) else value
                  for name, value in self.search.items()}
        return replace(self, factory=factory, search=search)

    def to_manifest(self) -> dict[str, Any]:
        """What the manifest's ``recipe`` records (the knobs themselves live in the stages' sections)."""
        return {"name": self.name, "factory": self.factory, "build": dict(self.build), "search": dict(self.search),
                "rerank": self.rerank, "reason": self.reason}


def ivf_lists(n_labels: int, lists_per_sqrt: float = 4) -> int:
    """IVF list count: ~``lists_per_sqrt`` sqrt(n) as a power of two, with at least 39 training points per list
    (FAISS's floor)."""
    target = lists_per_sqrt * math.sqrt(max(n_labels, 1))
    lists = 2 ** max(0, round(math.log2(target)))
    while lists > 1 and n_labels < 39 * lists:
        lists //= 2
    return lists


def deep_probes(factory: str) -> int:
    """``{nprobe_deep}``: an eighth of the factory's IVF lists, at least 256 (all of them when there are fewer).

    IVF recall at a fixed nprobe falls as the lists multiply with the catalogue, while the probed share of the lists
    holds it: IVF-SQ6 on PyPI MiniLM gives recall@10 0.961 at 256 of 1,024 lists (50k), 0.953 at 256 of 2,048
    (200k), 0.944 at 256 and 0.957 at 512 of 4,096 (723k; ``eval/bench/index-*/``)."""
    lists = re.search(r"IVF(\d+)", factory)
    if not lists:
        raise XMRError(f"{{nprobe_deep}} needs an IVF factory, got {factory!r}")
    return min(int(lists.group(1)), max(256, int(lists.group(1)) // 8))


def lean_ivf_lists(n_labels: int, code_bytes: float, centroid_bytes: float) -> int:
    """:func:`ivf_lists`, halved until the centroid table (lists x ``centroid_bytes``) is at most ``CENTROID_SHARE``
    of the codes. On a small catalogue of small codes the centroids are a visible share of the memory: 1,024 float32
    centroids at 50,000 x 384 are 1.5 MB beside 14.4 MB of SQ6 codes, and IVF1024,SQ6 sat at 0.258 of Flat's resident
    memory where IVF512,SQ6 sat at 0.246 (``eval/bench/index-50k-peers/sq6-lists.md``); fewer, longer lists cost
    probes, not recall. float16 centroids (``IVF{nlist_lean}(SQfp16)``) halve the table, so 50k keeps 1,024 lists;
    large catalogues keep every list (4,096 at 723k: 6.3 MB of float32 centroids beside 208 MB of codes)."""
    lists = ivf_lists(n_labels)
    while lists > 1 and lists * centroid_bytes > CENTROID_SHARE * code_bytes * n_labels:
        lists //= 2
    return lists


def pq_codes(dim: int, dims_per_code: int) -> int:
    """PQ sub-quantizers of ``dims_per_code`` dimensions each (lowered until it divides ``dim``)."""
    m = max(1, dim // dims_per_code)
    while dim % m:
        m -= 1
    return m


def bytes_per_vector(factory: str, dim: int) -> float:
    """Resident bytes per label of a factory string: FAISS's own code size (``factory_tools.get_code_size``:
    codes, plus graph links for HNSW) plus the int64 id every xmr index stores."""
    try:
        return get_code_size(dim, factory) + ID_BYTES
    except (RuntimeError, AssertionError, ValueError, KeyError) as error:
        raise XMRError(f"cannot estimate the memory of FAISS factory {factory!r}: {error}") from None


def centroid_bytes(factory: str, dim: int) -> float:
    """Bytes per IVF centroid: the coarse quantizer's code size (``IVF1024(SQfp16)``: 2 x dim), float32 by default."""
    quantizer = re.search(r"IVF\d+\(([^)]*)\)", factory)
    return bytes_per_vector(quantizer.group(1), dim) - ID_BYTES if quantizer else 4 * dim


def index_bytes(factory: str, dim: int, n_labels: int) -> float:
    """Resident bytes of an index of ``n_labels``: :func:`bytes_per_vector` for each, plus an IVF's centroid table
    (lists x :func:`centroid_bytes`), which on small catalogues of small codes is a visible share."""
    lists = re.search(r"IVF(\d+)", factory)
    return bytes_per_vector(factory, dim) * n_labels + (int(lists.group(1)) * centroid_bytes(factory, dim) if lists
                                                        else 0)


def parse_memory(text: str | int | None) -> int | None:
    """``4GB``, ``512MiB``, ``1e9`` or a byte count -> bytes (decimal and binary units both accepted)."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([\d.e+]+)\s*([KMGT]?)(i?)B?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise XMRError(f"--max-memory: cannot read {text!r}; write e.g. 4GB, 512MiB or a byte count")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), bool(match.group(3))
    return int(number * (1024 if binary else 1000) ** " KMGT".index(unit or " "))


def auto_recipe(n_labels: int, dim: int, max_memory: int | None = None, target_recall: float = 0.95) -> IndexRecipe:
    """The cheapest-to-query recipe that fits ``max_memory`` bytes, exact when the catalogue is small.

    Order of preference: exact Flat for small catalogues; up to ``FASTSCAN_UP_TO`` labels, fast-scan IVF with exact
    C++ refinement (the fastest measured at recall@10 0.95 on PyPI MiniLM: 14,543 QPS vs HNSW32's 5,343 at 200k,
    building in 4 s vs 89 s, ``eval/bench/index-200k-peers``; Flat's memory plus dim/8 + 8 bytes per label), beyond
    it HNSW32, whose search grows with log n; IVF-SQ8 (4x smaller); IVF-SQ6 (5.3x smaller, still no float32 vector
    resident); IVF-PQ with exact re-rank from memory-mapped vectors (~dim/4 + 8 bytes per label resident, plus the
    vector pages the re-rank reads).
    """
    if not 0 < target_recall <= 1:
        raise XMRError(f"target recall must be in (0, 1], got {target_recall}")
    budget = f"{max_memory / 1e9:.2f} GB" if max_memory else "no memory limit"

    def resident(recipe: IndexRecipe) -> float:
        return index_bytes(recipe.resolved(n_labels, dim).factory, dim, n_labels)

    def fits(recipe: IndexRecipe) -> bool:
        return max_memory is None or resident(recipe) <= max_memory

    def need(recipe: IndexRecipe) -> str:
        return f"{resident(recipe) / 1e9:.2f} GB"

    flat, fastscan, hnsw, sq8, sq6, pq = (PRESETS[name] for name in ("flat", "ivf-fastscan-refine", "hnsw32",
                                                                       "ivf-sq8", "ivf-sq6", "ivf-pq"))
    if (n_labels <= EXACT_UP_TO or target_recall >= 1) and fits(flat):
        why = "exact search requested (target recall 1)" if target_recall >= 1 else (
            f"{n_labels} labels <= {EXACT_UP_TO}: exact search is fast enough")
        return replace(flat, name="auto", reason=f"{why}; needs {need(flat)} ({budget})")
    fastest = ((fastscan, f"up to {FASTSCAN_UP_TO} labels, fast-scan IVF codes with exact refinement are the "
                          "fastest at high recall") if n_labels <= FASTSCAN_UP_TO else
               (hnsw, f"above {FASTSCAN_UP_TO} labels, graph search is the fastest at high recall"))
    for candidate, why in (fastest,
                           (sq8, "the float32 vectors do not fit; IVF with 8-bit scalar codes is 4x smaller than Flat"),
                           (sq6, "8-bit codes do not fit; IVF with 6-bit scalar codes is 5.3x smaller than Flat"),
                           (pq, "only product-quantized codes fit; exact re-rank of the top candidates from the "
                                "memory-mapped vectors restores recall")):
        if fits(candidate):
            return replace(candidate, name="auto", reason=(
                f"{n_labels} labels x {dim}-d, target recall@10 {target_recall}: {why}; needs {need(candidate)} "
                f"({budget}); search knobs calibrated on the built index"))
    raise XMRError(f"--max-memory {budget} is too small for {n_labels} labels x {dim}-d: the smallest recipe "
                   f"(IVF-PQ) needs {need(pq)}")


def load_recipe(spec: str | Path) -> IndexRecipe:
    """A preset name (``hnsw32``, see ``xmr/index/presets``) or a YAML recipe file."""
    text = str(spec)
    if text.lower() in PRESETS:
        return PRESETS[text.lower()]
    path = Path(text)
    if not path.is_file():
        raise XMRError(f"index recipe {text!r}: not a preset ({', '.join(sorted(PRESETS))}, auto) nor a YAML file")
    return read_recipe(path.read_text(encoding="utf-8"), str(path), path.stem)


def read_recipe(text: str, where: str, default_name: str) -> IndexRecipe:
    """Parse and validate one recipe's YAML text; errors name ``where`` (and the line for bad YAML)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise XMRError(f"{where}{line}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise XMRError(f"{where}: an index recipe is a mapping with name, factory, build, search, rerank")
    unknown = sorted(set(data) - {"name", "factory", "build", "search", "rerank", "description"})
    if unknown:
        raise XMRError(f"{where}: unknown field(s) {unknown}; known: name, factory, build, search, rerank, description")
    if not isinstance(data.get("factory"), str):
        raise XMRError(f"{where}: field 'factory' (a FAISS index_factory string) is required")
    for name in ("build", "search"):
        values = data.get(name) or {}
        templates = SEARCH_TEMPLATES if name == "search" else ()
        if not isinstance(values, dict) or not all(isinstance(v, int) and v > 0 or v in templates
                                                   for v in values.values()):
            also = f" (or {', '.join(templates)})" if templates else ""
            raise XMRError(f"{where}: field {name!r} must map knob names to positive integers{also}, got {values!r}")
    if "{nprobe_deep}" in (data.get("search") or {}).values() and "IVF" not in data["factory"]:
        raise XMRError(f"{where}: search knob {{nprobe_deep}} counts IVF lists, but factory {data['factory']!r} "
                       "has none")
    rerank = data.get("rerank", 0)
    if not isinstance(rerank, int) or rerank < 0:
        raise XMRError(f"{where}: field 'rerank' must be a non-negative integer, got {rerank!r}")
    return IndexRecipe(str(data.get("name", default_name)), data["factory"], dict(data.get("build") or {}),
                       dict(data.get("search") or {}), rerank)


def _read_presets() -> dict[str, IndexRecipe]:
    presets = {}
    for entry in sorted(PRESET_FOLDER.iterdir(), key=lambda entry: entry.name):
        if entry.name.endswith(".yaml"):
            recipe = read_recipe(entry.read_text(encoding="utf-8"), f"xmr/index/presets/{entry.name}",
                                 entry.name[:-5])
            presets[recipe.name] = recipe
    return presets


PRESETS: dict[str, IndexRecipe] = _read_presets()
