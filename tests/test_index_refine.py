"""FAISS refinement recipes (``IndexRefine``: quantised candidates re-scored in C++ from a finer copy): the
``k_factor_rf`` knob, the refine presets, and the GPU benchmark script's CPU-only run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_index_recipes import catalogue_of, clustered, exact_top, recall

from xmr.errors import XMRError
from xmr.index import build_index_from_embeddings, load_index
from xmr.index.recipes import PRESETS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["hnsw32-sq8-refine", "ivf-pq-refine", "ivf-fastscan-refine"])
def test_refine_presets_build_search_and_round_trip(name, tmp_path):
    labels, queries = clustered()
    truth = exact_top(labels, queries)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / name, recipe=name)
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    stage = manifest["stages"][0]
    assert "IndexRefine" in stage["structure"] and stage["search_params"]["k_factor_rf"] == PRESETS[name].search[
        "k_factor_rf"]
    found = index.search_embeddings(queries, k=10)
    unrefined = index.search_embeddings(queries, k=10, k_factor_rf=1)
    # 32-d toy vectors, 4,000 labels: the presets are sized for 384-d (PQ{m4}x8 trains 256 centroids per code)
    assert recall(found.ids, truth) >= recall(unrefined.ids, truth)
    assert recall(found.ids, truth) > {"hnsw32-sq8-refine": 0.9, "ivf-pq-refine": 0.75,
                                      "ivf-fastscan-refine": 0.95}[name]
    for mmap in (False, True):
        loaded = load_index(tmp_path / name, mmap=mmap)
        assert np.array_equal(loaded.search_embeddings(queries, k=10).ids, found.ids)


def test_k_factor_rf_rescores_more_candidates_exactly_and_raises_recall():
    labels, queries = clustered()
    truth = exact_top(labels, queries)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, None,
                                        factory="IVF64,PQ16x4fs,Refine(Flat)")
    recalls = [recall(index.search_embeddings(queries, k=10, nprobe=16, k_factor_rf=factor).ids, truth)
               for factor in (1, 4, 16)]
    assert recalls[0] < recalls[1] < recalls[2] and recalls[2] > 0.95
    hits = index.search_embeddings(queries, k=10, nprobe=16, k_factor_rf=16)
    rows = index._rows_of(hits.ids)
    exact = np.einsum("nd,nkd->nk", queries, labels[rows])  # the refine copy is Flat: the scores are exact
    assert np.allclose(hits.scores, exact, atol=1e-5)


def test_k_factor_rf_per_call_leaves_the_default_and_is_refused_where_nothing_refines():
    labels, queries = clustered(n=2000)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, factory="HNSW16_SQ4,RFlat")
    index.set_search_params(efSearch=32, k_factor_rf=1)
    before = index.search_embeddings(queries, k=10).ids
    deeper = index.search_embeddings(queries, k=10, k_factor_rf=8).ids
    assert not np.array_equal(before, deeper)  # 8 x k SQ4 candidates re-scored: a different, better top 10
    assert index.knobs()["k_factor_rf"] == 1 and np.array_equal(index.search_embeddings(queries, k=10).ids, before)
    plain = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, factory="HNSW16")
    with pytest.raises(XMRError, match="k_factor_rf"):
        plain.search_embeddings(queries, k=10, k_factor_rf=4)



def test_per_call_knobs_follow_a_changed_default_of_the_knobs_they_leave_unset():
    """Per-call parameters are memoised per knob setting; the memo must not keep an efSearch that set_search_params
    has since changed (a call passing only k_factor_rf takes efSearch from the index)."""
    labels, queries = clustered(n=2000)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, factory="HNSW16_SQ4,RFlat")
    index.set_search_params(efSearch=1)
    shallow = index.search_embeddings(queries, k=10, k_factor_rf=2).ids
    index.set_search_params(efSearch=256)
    deep = index.search_embeddings(queries, k=10, k_factor_rf=2).ids
    assert not np.array_equal(shallow, deep)
    assert np.array_equal(deep, index.search_embeddings(queries, k=10, k_factor_rf=2, efSearch=256).ids)
    assert recall(deep, exact_top(labels, queries)) > recall(shallow, exact_top(labels, queries))

def test_gpu_benchmark_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--labels", "3000", "--queries",
                           "50", "--texts", "0", "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    import torch

    report = (tmp_path / "report.md").read_text()
    if torch.cuda.is_available():
        assert "xmr TorchExactSearch" in report
    else:
        assert "skipping torch and FAISS-GPU search: torch sees no CUDA device" in done.stdout
        assert "GPU parts: skipped: torch sees no CUDA device" in report
        assert "| search | faiss IndexFlatIP | cpu | float32 | 50 |" in report
