"""Index recipes and auto, the search knobs (nprobe, efSearch, rerank) and memory-mapped loading shown to do what they
claim, chunked torch exact search, device search, and shards (saved id offsets, evaluated like one index)."""

import json
import subprocess
import sys

import faiss
import numpy as np
import pytest
from conftest import label_records

import xmr.index.label_index as label_index_module
from xmr.catalogue import LabelCatalogue
from xmr.cli import main
from xmr.errors import UnsupportedOperation, XMRError
from xmr.index import build_index_from_embeddings, load_index, recipes
from xmr.index.gpu import DeviceSearch
from xmr.index.recipes import (
    PRESETS,
    auto_recipe,
    bytes_per_vector,
    index_bytes,
    ivf_lists,
    load_recipe,
    parse_memory,
)
from xmr.index.shards import ShardedIndex, merge_top_k
from xmr.index.torch_exact import TorchExactSearch
from xmr.predictor import load_predictor


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


# ---- recipes --------------------------------------------------------------------------------------------------
def test_recipe_arithmetic_and_memory_parsing():
    assert ivf_lists(1_000_000) == 4096 and ivf_lists(1000) == 16 and ivf_lists(10) == 1
    assert PRESETS["ivf-pq"].resolved(1_000_000, 384).factory == "IVF4096,PQ192x4fs"
    # {nlist_lean} drops lists where 1,024 float32 centroids (1.5 MB) would outweigh 1/16 of 50k SQ6 codes; the
    # compressed preset's float16 centroids (0.79 MB) keep them, and stop where BLAS's workspace is a small share
    lean = recipes.IndexRecipe("lean", "IVF{nlist_lean},SQ6")
    assert [lean.resolved(n, 384).factory for n in (50_000, 200_000, 723_485)] == [
        "IVF512,SQ6", "IVF2048,SQ6", "IVF4096,SQ6"]
    assert [PRESETS["ivf-sq6"].resolved(n, 384).factory for n in (12_000, 50_000, 200_000, 723_485)] == [
        "IVF256(SQfp16),SQ6", "IVF1024(SQfp16),SQ6", "IVF2048,SQ6", "IVF4096,SQ6"]
    assert PRESETS["ivf-sq8"].resolved(50_000, 384).factory == "IVF1024,SQ8"  # {nlist} keeps every list
    # {nprobe_deep} probes the same share of the lists as they multiply: 1/8, at least 256, at most all of them
    assert [PRESETS["ivf-sq6"].resolved(n, 384).search for n in (2_000, 50_000, 200_000, 723_485)] == [
        {"nprobe": 32}, {"nprobe": 256}, {"nprobe": 256}, {"nprobe": 512}]
    assert PRESETS["ivf-sq6"].resolved(723_485, 384).to_manifest()["search"] == {"nprobe": 512}
    # fast-scan lists are cheap to scan: ~sqrt(n) of them, a quarter of {nlist}, dim/4 4-bit codes
    assert [PRESETS["ivf-fastscan-refine"].resolved(n, 384).factory for n in (50_000, 200_000, 723_485)] == [
        "IVF256,PQ96x4fs,RFlat", "IVF512,PQ96x4fs,RFlat", "IVF1024,PQ96x4fs,RFlat"]
    # FAISS code sizes plus an 8-byte id: 384 floats; 384 bytes; 96 bytes of PQ codes (8-bit x 96 or 4-bit x 192)
    assert bytes_per_vector("Flat", 384) == 384 * 4 + 8 and bytes_per_vector("IVF64,SQ8", 384) == 384 + 8
    assert bytes_per_vector("IVF64,PQ96", 384) == bytes_per_vector("IVF64,PQ192x4fs", 384) == 96 + 8
    assert bytes_per_vector("OPQ96,IVF1024,PQ96x4fs", 384) == 56  # 96 4-bit codes: 48 bytes; the rotation is shared
    assert bytes_per_vector("HNSW32", 384) == 384 * 4 + 2 * 32 * 4 + 8  # vectors + 64 level-0 links of 4 bytes
    assert index_bytes("IVF512,SQ6", 384, 50_000) == 50_000 * (288 + 8) + 512 * 384 * 4  # codes, ids, centroids
    assert index_bytes("IVF512(SQfp16),SQ6", 384, 50_000) == 50_000 * (288 + 8) + 512 * 384 * 2
    assert index_bytes("HNSW32", 384, 10) == 10 * bytes_per_vector("HNSW32", 384)
    assert parse_memory("4GB") == 4_000_000_000 and parse_memory("512MiB") == 512 * 2**20 and parse_memory(7) == 7
    with pytest.raises(XMRError, match="--max-memory"):
        parse_memory("lots")
    with pytest.raises(XMRError, match="cannot estimate the memory of FAISS factory 'Nonsense12'"):
        bytes_per_vector("Nonsense12", 384)


def test_auto_picks_by_size_and_budget_and_says_why():
    assert auto_recipe(10_000, 384).factory == "Flat"
    assert auto_recipe(2_000_000, 384).factory == "HNSW32"  # above FASTSCAN_UP_TO: graph search scales as log n
    fastscan = auto_recipe(800_000, 384)
    assert fastscan.resolved(800_000, 384).factory == "IVF1024,PQ96x4fs,RFlat" and "fast-scan" in fastscan.reason
    assert auto_recipe(800_000, 384, max_memory=parse_memory("1.29GB")).factory.endswith("RFlat")  # needs 1.28 GB
    assert auto_recipe(800_000, 384, max_memory=parse_memory("1.2GB")).factory.endswith("SQ8")
    sq8 = auto_recipe(2_000_000, 384, max_memory=parse_memory("1GB"))
    assert sq8.factory.endswith("SQ8") and "vectors do not fit" in sq8.reason and "1.00 GB" in sq8.reason
    sq6 = auto_recipe(2_000_000, 384, max_memory=parse_memory("700MB"))  # SQ8 needs 0.78 GB, SQ6 0.59 GB
    assert sq6.factory.endswith("SQ6") and "8-bit codes do not fit" in sq6.reason
    pq = auto_recipe(2_000_000, 384, max_memory=parse_memory("300MB"))
    assert "PQ" in pq.factory and pq.rerank > 0
    assert bytes_per_vector(pq.resolved(2_000_000, 384).factory, 384) * 2_000_000 <= 300e6
    assert auto_recipe(10_000_000, 384, target_recall=1.0).factory == "Flat"
    with pytest.raises(XMRError, match="too small.*IVF-PQ\\) needs 0.21 GB"):  # 2e6 x (96 + 8) bytes
        auto_recipe(2_000_000, 384, max_memory=parse_memory("100MB"))


def test_recipe_files_are_checked(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nfactory: HNSW16\nbuild: {efConstruction: 64}\nsearch: {efSearch: 32}\n")
    assert load_recipe(good) == recipes.IndexRecipe("mine", "HNSW16", {"efConstruction": 64}, {"efSearch": 32})
    assert load_recipe("HNSW32") is PRESETS["hnsw32"] and load_recipe("hnsw32-fast").search == {"efSearch": 48}
    bad = tmp_path / "bad.yaml"
    bad.write_text("factory: Flat\nserch: {efSearch: 3}\n")
    with pytest.raises(XMRError, match="bad.yaml: unknown field.*serch"):
        load_recipe(bad)
    bad.write_text("factory: HNSW16\nsearch: {efSearch: -1}\n")
    with pytest.raises(XMRError, match="bad.yaml: field 'search'"):
        load_recipe(bad)
    bad.write_text("factory: HNSW16\nsearch: {efSearch: '{nprobe_deep}'}\n")
    with pytest.raises(XMRError, match="bad.yaml: search knob {nprobe_deep} counts IVF lists.*HNSW16"):
        load_recipe(bad)
    bad.write_text("factory: IVF64,Flat\nsearch: {nprobe: '{nprobe_deeper}'}\n")
    with pytest.raises(XMRError, match="bad.yaml: field 'search' .*or {nprobe_deep}"):
        load_recipe(bad)
    bad.write_text("factory: HNSW16\nsearch: {efSearch: 3}: x\n")
    with pytest.raises(XMRError, match="bad.yaml line 2: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(XMRError, match="not a preset"):
        load_recipe("no-such-recipe")


def test_presets_are_package_data_found_from_any_working_directory(tmp_path):
    code = "from xmr.index.recipes import load_recipe; r = load_recipe('hnsw32'); print(r.factory, r.build, r.search)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "HNSW32 {'efConstruction': 200, 'cluster_layout': 1000} {'efSearch': 128}"


@pytest.mark.parametrize("name", ["hnsw32", "ivf-sq8", "ivf-sq6", "ivf-pq", "opq-ivf-pq"])
def test_presets_build_search_and_round_trip(name, tmp_path):
    labels, queries = clustered(n=1500 if name.startswith("opq") else 4000)  # OPQ trains 8-bit PQs: keep it small
    truth = exact_top(labels, queries)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / name, recipe=name)
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    candidates = manifest["stages"][0]
    assert manifest["recipe"]["name"] == name and candidates["type"] == "faiss" and "{" not in candidates["factory"]
    assert candidates["search_params"] == {**index.candidates.knobs(),
                                           **PRESETS[name].resolved(len(labels), labels.shape[1]).search}
    found = index.search_embeddings(queries, k=10).ids
    assert recall(found, truth) > 0.9
    loaded = load_index(tmp_path / name)
    assert np.array_equal(loaded.search_embeddings(queries, k=10).ids, found)
    if name == "hnsw32":
        graph = faiss.downcast_index(faiss.downcast_index(index.candidates.index).index)
        assert graph.hnsw.efConstruction == 200 and graph.hnsw.efSearch == 128
        assert recall(index.search_embeddings(queries, k=10, efSearch=16).ids, truth) < recall(found, truth)


# ---- search knobs ---------------------------------------------------------------------------------------------
def test_larger_nprobe_raises_recall_against_exact_search():
    labels, queries = clustered()
    truth = exact_top(labels, queries)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, factory="IVF64,Flat")
    recalls = [recall(index.search_embeddings(queries, k=10, nprobe=nprobe).ids, truth) for nprobe in (1, 4, 64)]
    assert recalls[0] < recalls[1] < recalls[2] and recalls[2] > 0.999  # probing every list is exact search
    index.set_search_params(nprobe=4)
    assert recall(index.search_embeddings(queries, k=10).ids, truth) == recalls[1]  # the default knob is used


def test_rerank_scores_are_exact_inner_products_and_restore_recall(tmp_path):
    labels, queries = clustered()
    truth = exact_top(labels, queries)
    coarse = recipes.IndexRecipe("pq-coarse", "IVF16,PQ8x4fs", search={"nprobe": 16}, rerank=100)
    build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / "pq", recipe=coarse)
    manifest = json.loads((tmp_path / "pq" / "manifest.json").read_text())
    assert manifest["stages"][1] == {"role": "rerank", "type": "exact-dense", "files": ["vectors.npy"], "depth": 100}
    assert "vectors.npy" in manifest["files"]
    loaded = load_index(tmp_path / "pq")
    without = loaded.search_embeddings(queries, k=10, rerank=0)
    with_rerank = loaded.search_embeddings(queries, k=10)

    def exact_scores(result):
        return np.einsum("nd,nkd->nk", queries, labels[result.rows])

    np.testing.assert_allclose(with_rerank.scores, exact_scores(with_rerank), rtol=1e-5, atol=1e-5)
    assert np.abs(without.scores - exact_scores(without)).max() > 1e-2  # 4-bit PQ scores are approximations
    assert np.all(np.diff(with_rerank.scores, axis=1) <= 1e-6)
    assert recall(without.ids, truth) + 0.2 < recall(with_rerank.ids, truth) and recall(with_rerank.ids, truth) > 0.9
    plain = build_index_from_embeddings(catalogue_of(10), labels[:10], None)
    with pytest.raises(XMRError, match="stores no vectors"):
        plain.search_embeddings(queries, k=3, rerank=5)


def test_a_rerank_shallower_than_k_still_returns_k_hits():
    labels, queries = clustered(n=2000)
    coarse = recipes.IndexRecipe("pq-coarse", "IVF16,PQ8x4fs", search={"nprobe": 16}, rerank=100)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe=coarse)
    result = index.search_embeddings(queries, k=10, rerank=5)
    assert result.rows.shape == (len(queries), 10) and result.found.all()
    exact = np.take_along_axis(queries @ labels.T, result.rows, axis=1)
    np.testing.assert_allclose(result.scores, exact, atol=1e-5)  # all k hits re-scored exactly


def test_auto_calibrates_to_the_target_and_records_why(tmp_path, monkeypatch):
    labels, queries = clustered()
    monkeypatch.setattr(recipes, "EXACT_UP_TO", 1000)
    fastscan = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe="auto", target_recall=0.97)
    assert fastscan.candidates.factory == "IVF64,PQ8x4fs,RFlat" and fastscan.manifest["recipe"]["calibration"][
        "knob"] == "nprobe"
    assert recall(fastscan.search_embeddings(queries, k=10).ids, exact_top(labels, queries)) > 0.93
    monkeypatch.setattr(recipes, "FASTSCAN_UP_TO", 2000)  # 4,000 labels: the graph, calibrated on efSearch
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / "auto", recipe="auto",
                                        target_recall=0.97)
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    candidates, calibration = manifest["stages"][0], manifest["recipe"]["calibration"]
    assert candidates["factory"] == "HNSW32" and "graph search" in manifest["recipe"]["reason"]
    assert calibration["knob"] == "efSearch" and calibration["target_reached"]
    assert candidates["search_params"]["efSearch"] == calibration["value"] == manifest["recipe"]["search"]["efSearch"]
    sweep = calibration["sweep"]
    assert set(sweep) == {"lowest", "midpoints", "off-manifold"}  # no user queries: both pseudo-query families
    assert all(sweep["lowest"][value] == min(sweep["midpoints"][value], sweep["off-manifold"][value])
               for value in sweep["lowest"])
    smaller = [int(value) for value in sweep["lowest"] if int(value) < calibration["value"]]
    assert all(sweep["lowest"][str(value)] < 0.97 for value in smaller)  # the smallest value that reaches it
    assert recall(index.search_embeddings(queries, k=10).ids, exact_top(labels, queries)) > 0.93
    small = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe="auto", max_memory=100_000)
    assert "PQ" in small.manifest["stages"][0]["factory"] and small.manifest["stages"][1]["depth"] > 0
    assert small.manifest["recipe"]["calibration"]["knob"] == "nprobe"


def test_off_manifold_pseudo_queries_sit_as_far_from_their_label_as_labels_from_their_neighbour():
    from xmr.index.calibration import off_manifold_queries

    labels, _ = clustered()
    neighbour = (labels @ labels.T - 2 * np.eye(len(labels))).max(axis=1).mean()
    queries = off_manifold_queries(labels, 300, 0)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    nearest = (queries @ labels.T).max(axis=1)
    assert abs(np.mean(nearest) - neighbour) < 0.05  # about as far as labels are from their nearest other label


def test_memory_mapped_index_searches_the_same_and_is_read_only(tmp_path):
    labels, queries = clustered(n=2000)
    for name in ("flat", "ivf-sq8"):
        build_index_from_embeddings(catalogue_of(len(labels)), labels, tmp_path / name, recipe=name)
        mapped, read = load_index(tmp_path / name, mmap=True), load_index(tmp_path / name)
        assert np.array_equal(mapped.search_embeddings(queries, k=5).ids, read.search_embeddings(queries, k=5).ids)
        assert mapped.info()["memory_mapped"] and not read.info()["memory_mapped"]
        with pytest.raises(UnsupportedOperation, match="memory-mapped"):
            mapped.add([{"id": "new", "text": "new label"}])
        with pytest.raises(UnsupportedOperation, match="memory-mapped"):
            mapped.remove(["L1"])
        assert read.remove(["L1"]) == 1  # the same folder opened normally can change


# ---- the same knobs from the command line ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_indexes(tmp_path_factory, tiny_model):
    """The 300 test labels as a Flat index and as the ivf-pq preset (4 IVF lists, 4-bit PQ, re-rank 100)."""
    folder = tmp_path_factory.mktemp("cli-indexes")
    labels = folder / "labels.jsonl"
    labels.write_text("".join(json.dumps(record) + "\n" for record in label_records()))
    for recipe in ("flat", "ivf-pq"):
        assert main(["build", "--labels", str(labels), "--encoder", tiny_model, "--recipe", recipe,
                     "--out", str(folder / recipe)]) == 0
    queries = folder / "queries.txt"
    queries.write_text("".join(record["text"] + " " + record["text"].split()[0] + "\n"
                               for record in label_records(40, seed=1)))
    return folder


def cli_hits(capsys, folder, queries, *flags):
    capsys.readouterr()
    assert main(["query", str(folder), "--file", str(queries), "--json", "-k", "10", *flags]) == 0
    return [json.loads(line)["hits"] for line in capsys.readouterr().out.splitlines()]


def ids_of(hits):
    return [[hit["id"] for hit in query] for query in hits]


def test_cli_nprobe_changes_the_hits(cli_indexes, capsys):
    queries = cli_indexes / "queries.txt"
    exact = ids_of(cli_hits(capsys, cli_indexes / "flat", queries))
    one = ids_of(cli_hits(capsys, cli_indexes / "ivf-pq", queries, "--nprobe", "1"))
    every = ids_of(cli_hits(capsys, cli_indexes / "ivf-pq", queries, "--nprobe", "4"))
    assert one != every
    assert recall(np.array(one), np.array(exact)) < recall(np.array(every), np.array(exact))


def test_cli_rerank_0_returns_pq_scores_and_the_default_exact_ones(cli_indexes, tiny_encoder, capsys):
    queries = cli_indexes / "queries.txt"
    vectors = np.load(cli_indexes / "ivf-pq" / "vectors.npy")  # label ids are rows
    encoded = tiny_encoder.encode(queries.read_text().splitlines(), "query").values

    def error_to_exact(hits):
        found = np.array(ids_of(hits))
        exact = np.einsum("nd,nkd->nk", encoded, vectors[found])
        return np.abs(np.array([[hit["score"] for hit in query] for query in hits]) - exact).max()

    assert error_to_exact(cli_hits(capsys, cli_indexes / "ivf-pq", queries)) < 1e-5
    assert error_to_exact(cli_hits(capsys, cli_indexes / "ivf-pq", queries, "--rerank", "0")) > 1e-3


def test_cli_mmap_opens_read_only_with_the_same_hits(cli_indexes, capsys, monkeypatch):
    opened = []
    real_load_index = label_index_module.load_index
    monkeypatch.setattr(label_index_module, "load_index",
                        lambda *args, **options: opened.append(real_load_index(*args, **options)) or opened[-1])
    queries = cli_indexes / "queries.txt"
    for name in ("flat", "ivf-pq"):
        plain = cli_hits(capsys, cli_indexes / name, queries)
        assert not opened[-1].read_only
        assert cli_hits(capsys, cli_indexes / name, queries, "--mmap") == plain
        assert opened[-1].read_only
        with pytest.raises(UnsupportedOperation, match="memory-mapped"):
            opened[-1].add([{"id": 999, "text": "python"}])


def test_cli_builds_auto_and_says_why(tmp_path, labels_file, tiny_model, capsys):
    out = tmp_path / "auto"
    assert main(["build", "--labels", str(labels_file), "--encoder", tiny_model, "--recipe", "auto",
                 "--max-memory", "1MB", "--out", str(out)]) == 0
    assert "recipe: 300 labels <= 50000: exact search is fast enough" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"][0]["factory"] == "Flat" and manifest["recipe"]["name"] == "auto"
    assert "exact search is fast enough" in manifest["recipe"]["reason"]


# ---- torch exact search and device search -------------------------------------------------------------------------
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


def test_device_search_is_exact_torch_for_flat_and_refuses_what_it_cannot_do():
    labels, queries = clustered(n=1000)
    index = build_index_from_embeddings(catalogue_of(len(labels)), labels, None)
    expected = index.search_embeddings(queries, k=10)
    index.device_search = DeviceSearch(index.candidates, "cpu", "float32")  # what to_device("cuda") sets up
    assert index.device_search.backend == "torch"
    moved = index.search_embeddings(queries, k=10)
    assert np.array_equal(moved.ids, expected.ids) and moved.label_ids(0) == expected.label_ids(0)
    with pytest.raises(XMRError, match="do not apply"):  # a knob is refused on the device too, never dropped
        index.search_embeddings(queries, k=10, nprobe=4)
    with pytest.raises(UnsupportedOperation, match="GPU copy"):
        index.remove(["L1"])
    assert index.to_device("cpu").device_search is None and index.remove(["L1"]) == 1
    graph = build_index_from_embeddings(catalogue_of(len(labels)), labels, None, recipe="hnsw32")
    with pytest.raises(XMRError, match="no GPU support.*only exact"):
        DeviceSearch(graph.candidates, "cpu", "float32")


# ---- shards -------------------------------------------------------------------------------------------------------
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
    assert ids.tolist() == [[9, 4, 8, 7]] and scores[0].tolist() == pytest.approx([0.9, 0.5, 0.2, 0.1])


def test_sharded_index_keeps_its_saved_id_offsets(tmp_path, capsys):
    labels, queries = clustered(n=2000)
    shards = [build_index_from_embeddings(catalogue_of(1000, start), labels[start:start + 1000], None)
              for start in (0, 1000)]
    sharded = ShardedIndex(shards, id_offsets=[0, 5000])  # not the offsets the shard sizes imply (0, 1000)
    before = sharded.search_embeddings(queries, k=10)
    sharded.save(tmp_path / "sharded")
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert manifest["kind"] == "sharded-index" and [s["id_offset"] for s in manifest["shards"]] == [0, 5000]
    loaded = load_predictor(tmp_path / "sharded")
    assert isinstance(loaded, ShardedIndex) and loaded.id_offsets.tolist() == [0, 5000]
    assert main(["info", str(tmp_path / "sharded")]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [f"sharded-index {tmp_path / 'sharded'}", "labels       2000"]
    assert loaded.internal_id("L1500") == 5500
    after = loaded.search_embeddings(queries, k=10)
    assert np.array_equal(after.ids, before.ids) and np.array_equal(after.rows, before.rows)
    second = after.rows >= 1000  # hits in the second shard carry its offset
    assert second.any() and (after.ids[second] == after.rows[second] - 1000 + 5000).all()


def test_xmr_eval_of_a_sharded_folder_gives_the_single_index_metrics(tmp_path, tiny_encoder, labels_file, capsys):
    catalogue = LabelCatalogue.from_file(labels_file)
    vectors = tiny_encoder.encode(catalogue.items(), "label")
    half = len(catalogue) // 2
    build_index_from_embeddings(catalogue, vectors, tmp_path / "single", encoder=tiny_encoder)
    parts = [list(range(half)), list(range(half, len(catalogue)))]
    ShardedIndex([build_index_from_embeddings(catalogue.take(rows), vectors.take(rows), None, encoder=tiny_encoder)
                  for rows in parts]).save(tmp_path / "sharded")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": " ".join(catalogue.texts[row].split()[:2]),
                                        "labels": [catalogue.ids[row]]}) + "\n" for row in range(0, 300, 7)))
    runs = {}
    for name in ("single", "sharded"):
        assert main(["eval", str(tmp_path / name), "--test", str(test), "-k", "1", "5",
                     "--out", str(tmp_path / "runs" / name)]) == 0
        runs[name] = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
    assert [runs[name]["predictor"]["kind"] for name in runs] == ["label-index", "sharded-index"]
    assert 0.1 < runs["single"]["metrics"]["P@1"] < 1  # a task where ranking matters
    assert runs["sharded"]["metrics"] == pytest.approx(runs["single"]["metrics"])
