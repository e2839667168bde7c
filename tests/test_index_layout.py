"""Where an index's bytes lie: the ``cluster_layout`` build knob (a graph's vectors stored by k-means cluster) and
huge pages for the arrays a search reads at random (``faiss_ops.use_huge_pages``)."""

import platform
import re
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from test_index_recipes import catalogue_of, clustered

from xmr.errors import XMRError
from xmr.index import build_index_from_embeddings, faiss_ops, huge_pages, load_index
from xmr.index.recipes import IndexRecipe


def stored_order(index) -> np.ndarray:
    """Label rows in the order the FAISS index stores their vectors."""
    return faiss.vector_to_array(faiss.downcast_index(index.candidates.index).id_map)


def neighbour_similarity(labels: np.ndarray, order: np.ndarray) -> float:
    """Mean cosine between vectors stored next to each other."""
    ordered = labels[order]
    return float(np.mean(np.sum(ordered[1:] * ordered[:-1], axis=1)))


@pytest.mark.parametrize("factory", ["HNSW16", "HNSW16_SQ8,RFlat"])
def test_cluster_layout_stores_neighbours_together_and_keeps_every_answer(factory, tmp_path):
    labels, queries = clustered(n=4000, clusters=40)
    build = {"efConstruction": 64}
    search = {"efSearch": 32} | ({"k_factor_rf": 2} if "RFlat" in factory else {})
    plain = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe=IndexRecipe(
        "plain", factory, build, search))
    laid_out = build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / "laid-out", recipe=IndexRecipe(
        "laid-out", factory, build | {"cluster_layout": 50}, search))
    assert np.array_equal(stored_order(plain), np.arange(len(labels)))
    assert sorted(stored_order(laid_out)) == list(range(len(labels)))
    # 40 blobs in random order: stored by cluster, neighbours in memory are neighbours in space
    assert neighbour_similarity(labels, stored_order(laid_out)) > neighbour_similarity(labels, np.arange(len(labels))
                                                                                       ) + 0.3
    # the same graph, moved: every answer and score is the one the insertion-order index gives
    expected = plain.search_embeddings(queries, k=10)
    for index in (laid_out, load_index(tmp_path / "laid-out")):
        found = index.search_embeddings(queries, k=10)
        assert np.array_equal(found.ids, expected.ids) and np.allclose(found.scores, expected.scores, atol=1e-5)
    assert load_index(tmp_path / "laid-out").manifest["recipe"]["build"]["cluster_layout"] == 50


@pytest.mark.parametrize(("factory", "build", "message"), [
    ("Flat", {"cluster_layout": 100}, "does not apply to IndexIDMap2>IndexFlat"),
    ("IVF16,Flat", {"cluster_layout": 100}, "does not apply"),
    ("HNSW16", {"cluster_layout": 10}, "must be at least 39"),
])
def test_cluster_layout_is_refused_without_a_graph_or_with_clusters_too_small_for_kmeans(factory, build, message):
    labels, _ = clustered(n=1000)
    with pytest.raises(XMRError, match=message):
        build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe=IndexRecipe("r", factory, build))


def huge_bytes_in(address: int, nbytes: int) -> int:
    """``AnonHugePages`` of the mappings that overlap ``[address, address + nbytes)`` (``/proc/self/smaps``; asking
    for huge pages splits a mapping at the first whole huge page)."""
    overlaps, total = False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        span = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if span:
            overlaps = int(span.group(1), 16) < address + nbytes and address < int(span.group(2), 16)
        elif overlaps and line.startswith("AnonHugePages:"):
            total += int(line.split()[1]) * 1024
    return total


def kernel_collapses() -> bool:
    """Linux 6.1+ (``MADV_COLLAPSE``) with transparent huge pages not switched off."""
    version = tuple(int(part) for part in re.findall(r"\d+", platform.release())[:2])
    return (sys.platform.startswith("linux") and version >= (6, 1) and huge_pages.THP_MODE.is_file()
            and "[never]" not in huge_pages.THP_MODE.read_text())


@pytest.mark.skipif(not kernel_collapses(), reason="needs Linux 6.1+ with transparent huge pages")
def test_a_loaded_index_keeps_its_vectors_on_huge_pages_unless_mapped_or_turned_off(tmp_path, monkeypatch):
    labels, _ = clustered(n=20_000, dim=384)  # 30 MB of float32 vectors: whole 2 MiB pages
    build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / "flat", factory="Flat")
    loaded = load_index(tmp_path / "flat")
    codes = faiss.downcast_index(faiss.downcast_index(loaded.candidates.index).index).codes
    assert huge_bytes_in(int(codes.data()), codes.byte_size()) >= 8 * huge_pages.HUGE_PAGE
    # a memory-mapped index reads its vectors from the page cache: FAISS does not own them, xmr leaves them be
    assert faiss_ops.use_huge_pages(load_index(tmp_path / "flat", mmap=True).candidates.index) == 0
    monkeypatch.setenv("XMR_HUGE_PAGES", "0")
    huge_pages._madvise.cache_clear()
    try:
        assert faiss_ops.use_huge_pages(load_index(tmp_path / "flat").candidates.index) == 0
    finally:
        huge_pages._madvise.cache_clear()
