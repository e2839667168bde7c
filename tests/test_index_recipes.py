"""Index recipes and auto, exact re-rank, memory-mapped loading, chunked torch exact search, and shards."""

import json

import faiss
import numpy as np
import pytest

from xmr.catalogue import LabelCatalogue
from xmr.cli import main
from xmr.errors import UnsupportedOperation, XMRError
from xmr.evaluation import evaluate
from xmr.index import build_index_from_embeddings, load_index, recipes
from xmr.index.exact import TorchExactSearch
from xmr.index.gpu import device_searcher
from xmr.index.recipes import PRESETS, auto_recipe, bytes_per_vector, ivf_lists, load_recipe, parse_memory
from xmr.index.shards import ShardedIndex, merge_top_k


def clustered(n=4000, dim=32, clusters=40, n_queries=200, seed=0):
    """Unit vectors around cluster centres (like text embeddings), and queries drawn the same way."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))

    def draw(count):
        points = centres[rng.integers(clusters, size=count)] + 0.7 * rng.normal(size=(count, dim))
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(n_queries)


def catalogue_of(n, start=0):
    return LabelCatalogue.from_records([{"id": f"L{row}", "text": f"label {row}"} for row in range(start, start + n)])


def exact_top(labels, queries, k=10):
    return faiss.knn(queries, labels, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall(found, truth):
    return np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)])


def test_recipe_arithmetic_and_memory_parsing():
    assert ivf_lists(1_000_000) == 4096 and ivf_lists(1000) == 16 and ivf_lists(10) == 1
    assert PRESETS["ivf-pq"].resolved(1_000_000, 384).factory == "IVF4096,PQ192x4fs"
    assert bytes_per_vector("Flat", 384) == 1544 and bytes_per_vector("IVF64,SQ8", 384) == 392
    assert bytes_per_vector("IVF64,PQ96", 384) == bytes_per_vector("IVF64,PQ192x4fs", 384) == 104
    assert bytes_per_vector("HNSW32", 384) > 1544
    assert parse_memory("4GB") == 4_000_000_000 and parse_memory("512MiB") == 512 * 2**20 and parse_memory(7) == 7
    with pytest.raises(XMRError, match="--max-memory"):
        parse_memory("lots")


def test_auto_picks_by_size_and_budget_and_says_why():
    assert auto_recipe(10_000, 384).factory == "Flat"
    assert auto_recipe(2_000_000, 384).factory == "HNSW32"
    sq8 = auto_recipe(2_000_000, 384, max_memory=parse_memory("1GB"))
    assert sq8.factory.endswith("SQ8") and "does not fit" in sq8.reason and "1.00 GB" in sq8.reason
    pq = auto_recipe(2_000_000, 384, max_memory=parse_memory("300MB"))
    assert "PQ" in pq.factory and pq.rerank > 0
    assert auto_recipe(10_000_000, 384, target_recall=1.0).factory == "Flat"
    with pytest.raises(XMRError, match="too small.*IVF-PQ\\) needs 0.21 GB"):
        auto_recipe(2_000_000, 384, max_memory=parse_memory("100MB"))


def test_recipe_files_are_checked(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nfactory: HNSW16\nbuild: {efConstruction: 64}\nsearch: {efSearch: 32}\n")
    assert load_recipe(good) == recipes.IndexRecipe("mine", "HNSW16", {"efConstruction": 64}, {"efSearch": 32})
    assert load_recipe("hnsw32") is PRESETS["hnsw32"] and load_recipe("hnsw32-fast").factory == "HNSW32"
    bad = tmp_path / "bad.yaml"
    bad.write_text("factory: Flat\nserch: {efSearch: 3}\n")
    with pytest.raises(XMRError, match="bad.yaml: unknown field.*serch"):
        load_recipe(bad)
    bad.write_text("factory: HNSW16\nsearch: {efSearch: -1}\n")
    with pytest.raises(XMRError, match="bad.yaml: field 'search'"):
        load_recipe(bad)
    with pytest.raises(XMRError, match="not a preset"):
        load_recipe("no-such-recipe")


@pytest.mark.parametrize("name", ["hnsw32", "ivf-sq8", "ivf-pq", "opq-ivf-pq"])
def test_presets_build_search_and_round_trip(name, tmp_path):
    labels, queries = clustered(n=1500 if name.startswith("opq") else 4000)  # OPQ trains 8-bit PQs: keep it small
    truth = exact_top(labels, queries)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / name, recipe=name)
    faiss_manifest = index.manifest["faiss"]
    assert faiss_manifest["recipe"]["name"] == name and "{" not in faiss_manifest["factory"]
    found = index.search_embeddings(queries, k=10).ids
    assert recall(found, truth) > 0.9
    loaded = load_index(tmp_path / name)
    assert np.array_equal(loaded.search_embeddings(queries, k=10).ids, found)
    if name == "hnsw32":
        graph = faiss.downcast_index(faiss.downcast_index(index.faiss_index).index)
        assert graph.hnsw.efConstruction == 200 and faiss_manifest["search_params"]["efSearch"] == 128
        assert recall(index.search_embeddings(queries, k=10, efSearch=16).ids, truth) < recall(found, truth)


def test_rerank_restores_recall_of_product_quantization(tmp_path):
    labels, queries = clustered()
    truth = exact_top(labels, queries)
    coarse = recipes.IndexRecipe("pq-coarse", "IVF16,PQ8x4fs", search={"nprobe": 16}, rerank=100)
    build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / "pq", recipe=coarse)
    manifest = json.loads((tmp_path / "pq" / "manifest.json").read_text())
    assert "vectors.npy" in manifest["files"] and manifest["faiss"]["rerank"] == 100
    loaded = load_index(tmp_path / "pq")
    without = loaded.search_embeddings(queries, k=10, rerank=0)
    with_rerank = loaded.search_embeddings(queries, k=10)
    assert recall(without.ids, truth) + 0.2 < recall(with_rerank.ids, truth) and recall(with_rerank.ids, truth) > 0.9
    exact_scores = np.einsum("nd,nkd->nk", queries, labels[with_rerank.ids])
    np.testing.assert_allclose(with_rerank.scores, exact_scores, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(with_rerank.scores, axis=1) <= 1e-6)
    plain = build_index_from_embeddings(catalogue_of(10), labels[:10], None)
    with pytest.raises(XMRError, match="stores no vectors"):
        plain.search_embeddings(queries, k=3, rerank=5)


def test_auto_calibrates_to_the_target_and_records_why(tmp_path, monkeypatch):
    labels, queries = clustered()
    monkeypatch.setattr(recipes, "EXACT_UP_TO", 1000)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / "auto", recipe="auto",
                                        target_recall=0.97)
    chosen = json.loads((tmp_path / "auto" / "manifest.json").read_text())["faiss"]
    calibration = chosen["recipe"]["calibration"]
    assert chosen["factory"] == "HNSW32" and "graph search" in chosen["recipe"]["reason"]
    assert calibration["knob"] == "efSearch" and calibration["target_reached"]
    assert chosen["search_params"]["efSearch"] == calibration["value"]
    assert recall(index.search_embeddings(queries, k=10).ids, exact_top(labels, queries)) > 0.93
    small = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe="auto", max_memory=100_000)
    assert "PQ" in small.manifest["faiss"]["factory"] and small.manifest["faiss"]["rerank"] > 0
    assert small.manifest["faiss"]["recipe"]["calibration"]["knob"] == "nprobe"


def test_memory_mapped_index_searches_the_same_and_is_read_only(tmp_path):
    labels, queries = clustered(n=2000)
    for name in ("flat", "ivf-sq8"):
        build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / name, recipe=name)
        mapped, read = load_index(tmp_path / name, mmap=True), load_index(tmp_path / name)
        assert np.array_equal(mapped.search_embeddings(queries, k=5).ids, read.search_embeddings(queries, k=5).ids)
        assert mapped.info()["memory_mapped"]
        with pytest.raises(UnsupportedOperation, match="memory-mapped"):
            mapped.remove(["L1"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_exact_search_is_chunked_and_matches_faiss(dtype):
    labels, queries = clustered(n=3000)
    ids = np.arange(len(labels)) * 3 + 7
    search = TorchExactSearch(labels, ids, device="cpu", dtype=dtype, query_block=64, label_block=500)
    found, scores = search.search(queries, 20)
    truth = ids[exact_top(labels, queries, 20)]
    if dtype == "float32":
        assert np.array_equal(found, truth)
    else:
        assert recall(found, truth) > 0.9
    assert np.all(np.diff(scores, axis=1) <= 1e-2)
    deep, deep_scores = search.search(queries[:3], 3500)  # k beyond the catalogue (and FAISS-GPU's 2048)
    assert (deep[:, :3000] >= 0).all() and (deep[:, 3000:] == -1).all() and np.isinf(deep_scores[:, 3000:]).all()
    assert sorted(deep[0, :3000]) == sorted(ids)


def test_index_on_a_device_uses_torch_for_flat_and_refuses_graphs_without_faiss_gpu():
    labels, queries = clustered(n=1000)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, None)
    expected = index.search_embeddings(queries, k=10)
    index.device_search = device_searcher(index.faiss_index, "cpu", "float32")  # what to_device("cuda") sets up
    moved = index.search_embeddings(queries, k=10)
    assert np.array_equal(moved.ids, expected.ids) and moved.label_ids(0) == expected.label_ids(0)
    with pytest.raises(UnsupportedOperation, match="GPU copy"):
        index.remove(["L1"])
    graph = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe="hnsw32")
    with pytest.raises(XMRError, match="no GPU support.*only exact"):
        device_searcher(graph.faiss_index, "cpu", "float32")


def test_shards_merge_to_the_single_index_answer(tmp_path):
    labels, queries = clustered(n=3000)
    whole = build_index_from_embeddings(catalogue_of(3000), labels, None)
    for number, (start, end) in enumerate(((0, 1000), (1000, 2200), (2200, 3000))):
        build_index_from_embeddings(catalogue_of(end - start, start), labels[start:end], tmp_path / f"shard{number}")
    sharded = ShardedIndex.open([tmp_path / f"shard{number}" for number in range(3)])
    expected, merged = whole.search_embeddings(queries, k=10), sharded.search_embeddings(queries, k=10)
    assert [merged.label_ids(q) for q in range(len(queries))] == [expected.label_ids(q) for q in range(len(queries))]
    np.testing.assert_allclose(merged.scores, expected.scores, rtol=1e-6)
    ids, scores = merge_top_k([np.array([[4, -1]]), np.array([[9, 8, 7]])],
                              [np.array([[0.5, -np.inf]]), np.array([[0.9, 0.2, 0.1]])], 4)
    assert ids.tolist() == [[9, 4, 8, 7]] and scores[0, 0] == np.float32(0.9)


def test_shards_evaluate_like_one_index(tmp_path, tiny_encoder, labels_file):
    catalogue = LabelCatalogue.from_file(labels_file)
    vectors = tiny_encoder.encode_labels(catalogue.items())
    half = len(catalogue) // 2
    whole = build_index_from_embeddings(catalogue, vectors, None, encoder=tiny_encoder)
    shards = [build_index_from_embeddings(catalogue.take(list(rows)), vectors[rows], tmp_path / f"s{number}",
                                          encoder=tiny_encoder)
              for number, rows in enumerate((range(half), range(half, len(catalogue))))]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": catalogue.texts[row], "labels": [catalogue.ids[row]]}) + "\n"
                            for row in range(0, len(catalogue), 7)))
    single, split = evaluate(whole, test)["metrics"], evaluate(ShardedIndex(shards), test)["metrics"]
    assert single["P@1"] > 0.3 and split == pytest.approx(single)


def test_cli_builds_from_recipes_and_searches_with_knobs(tmp_path, labels_file, tiny_model, capsys):
    out = tmp_path / "auto"
    assert main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--recipe", "auto",
                 "--max-memory", "1MB", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recipe:" in printed and "exact search is fast enough" in printed
    assert main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--recipe", "ivf-pq",
                 "--out", str(tmp_path / "pq")]) == 0
    capsys.readouterr()
    assert main(["query", str(tmp_path / "pq"), "python data", "-k", "3", "--json", "--mmap", "--rerank", "0",
                 "--nprobe", "4"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert len(hits["hits"]) == 3
    assert main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--recipe", "hnsw32",
                 "--factory", "Flat", "--out", str(tmp_path / "x")]) == 2
