"""The one-house design: representations as types, index stages in the manifest, version-1 folders, any predictor
in evaluation, and a toy second representation that goes through build, save, load, search and evaluate."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xmr
from xmr.cli import main
from xmr.encoders import load_encoder
from xmr.errors import IndexFolderError, XMRError
from xmr.evaluation import evaluate
from xmr.index.folder import manifest_digest
from xmr.predictor import Predictor, as_items, load_predictor
from xmr.representations import BinaryCodes, DenseVectors, TokenVectors
from xmr.search import SearchResult

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))
import toy_method  # noqa: E402  (tests/toy_method: the toy method's own package)


# ---- representations --------------------------------------------------------------------------------------------
def test_binary_scores_are_agreeing_bits_of_a_naive_hamming_loop():
    rng = np.random.default_rng(1)
    queries, labels = BinaryCodes.from_signs(rng.normal(size=(5, 24))), BinaryCodes.from_signs(rng.normal(size=(7, 24)))
    naive = np.array([[sum(bin(a ^ b).count("1") for a, b in zip(q, label, strict=True)) for label in labels.codes]
                      for q in queries.codes])
    np.testing.assert_array_equal(queries.hamming(labels), naive)
    np.testing.assert_array_equal(queries.score(labels), 24 - naive)
    with pytest.raises(XMRError, match="must be uint8"):
        BinaryCodes(np.zeros((2, 3), np.uint8), bits=16)


def test_token_vectors_take_and_concat_keep_each_items_tokens():
    tokens = TokenVectors(np.arange(12, dtype=np.float32).reshape(6, 2), [0, 1, 4, 6], np.eye(3, 2))
    taken = tokens.take([2, 0])
    np.testing.assert_array_equal(taken.tokens(0), tokens.tokens(2))
    np.testing.assert_array_equal(taken.tokens(1), tokens.tokens(0))
    joined = TokenVectors.concat([taken, tokens])
    assert len(joined) == 5 and joined.values.dtype == np.float16
    np.testing.assert_array_equal(joined.tokens(3), tokens.tokens(1))
    with pytest.raises(XMRError, match="offsets"):
        TokenVectors(np.zeros((3, 2)), [0, 2], np.zeros((1, 2)))


def test_a_representation_of_the_wrong_size_is_refused_naming_both():
    with pytest.raises(XMRError, match="got dense with dim 3; expected dim 4"):
        DenseVectors(np.ones((2, 3))).check_matches({"kind": "dense", "metric": "inner_product", "dim": 4}, "q")


# ---- a toy second representation: sign hashes of a dense encoder, in its own package (tests/toy_method) ------------
def test_a_toy_binary_representation_builds_saves_loads_searches_and_evaluates(tiny_model, labels_file, tmp_path,
                                                                              capsys):
    encoder = load_encoder({"type": "test-sign-hash", "dense": {"type": "sentence-transformers",
                                                                "model": tiny_model, "device": "cpu"}})
    catalogue = xmr.LabelCatalogue.from_file(labels_file)
    xmr.build_index(catalogue, encoder, tmp_path / "codes")
    manifest = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    assert manifest["representation"] == {"kind": "binary", "metric": "hamming", "bits": 32}
    assert manifest["stages"][0]["type"] == "faiss-binary" and manifest["stages"][0]["factory"] == "BFlat"
    index = load_predictor(tmp_path / "codes")
    result = index.predict(catalogue.texts[:20], k=3)
    assert result.score == "agreeing bits"
    codes = encoder.encode(catalogue.texts, "label")
    agreement = codes.take(range(20)).score(codes)  # what a brute-force Hamming search gives
    np.testing.assert_array_equal(result.scores[:, 0], agreement.max(axis=1))
    assert all(agreement[query, row] == agreement[query].max() for query, row in enumerate(result.rows[:, 0]))

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": text, "labels": [label]}) + "\n"
                            for label, text in zip(catalogue.ids, catalogue.texts, strict=True)))
    report = evaluate(index, test, ks=(1,))
    everything = codes.score(codes)
    own_is_a_best = np.mean(np.diag(everything) == everything.max(axis=1))
    own_is_the_only_best = np.mean((np.diag(everything) == everything.max(axis=1))
                                   & ((everything == everything.max(axis=1, keepdims=True)).sum(axis=1) == 1))
    assert own_is_the_only_best <= report["metrics"]["P@1"] <= own_is_a_best

    assert main(["query", str(tmp_path / "codes"), catalogue.texts[0], "-k", "1", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert hit["id"] == result.label_ids(0)[0] and hit["score"] == 32.0


def test_a_method_package_named_in_the_registry_is_imported_when_a_folder_needs_it(tiny_model, labels_file, tmp_path):
    toy_method.SignHashEncoder  # noqa: B018  (built here; a fresh process knows it only through XMR_METHODS)
    encoder = load_encoder({"type": "test-sign-hash", "dense": {"type": "sentence-transformers", "model": tiny_model}})
    xmr.build_index(xmr.LabelCatalogue.from_file(labels_file), encoder, tmp_path / "codes")
    command = [sys.executable, "-m", "xmr.cli", "query", str(tmp_path / "codes"), "python sql", "-k", "1", "--json"]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    unknown = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert unknown.returncode == 2 and "unknown encoder type 'test-sign-hash'" in unknown.stderr
    environment["XMR_METHODS"] = "toy=toy_method"
    known = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert known.returncode == 0, known.stderr
    assert json.loads(known.stdout)["hits"][0]["score"] == 32.0


# ---- any predictor in evaluation -----------------------------------------------------------------------------------
class KeywordPredictor(Predictor):
    """A non-index predictor: a label scores the number of its words that occur in the query."""

    kind = "test-keywords"

    def __init__(self, catalogue: xmr.LabelCatalogue) -> None:
        self.catalogue = catalogue

    def predict(self, items, k: int = 10, **options) -> SearchResult:
        words = [set(text.split()) for text in self.catalogue.texts]
        scores = np.array([[len(label & set(item.split())) for label in words] for item in as_items(items)],
                          dtype=np.float32)
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        sets = [np.flatnonzero(row > 0) for row in scores]  # every label sharing a word applies
        return SearchResult(rows, np.take_along_axis(scores, rows, axis=1), rows, self.catalogue, "shared words", sets)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": None, "encoder": None, "representation": None,
                "structure": "word overlap", "params": {}, "labels": len(self.catalogue)}


def test_a_result_keeps_ids_apart_from_rows_and_empties_the_slots_without_a_label():
    catalogue = xmr.LabelCatalogue.from_records([{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}])
    rows = np.array([[1, 0], [0, -1]])
    result = SearchResult(rows, np.array([[0.9, 0.5], [0.7, 0.1]]), rows, catalogue)
    result.ids[0, 0] = 7
    assert result.rows[0, 0] == 1 and rows[0, 0] == 1  # ids given as the rows array are a copy of it
    assert result.ids[1, 1] == -1 and np.isnan(result.scores[1, 1]) and result.scores[0, 1] == np.float32(0.5)
    full = SearchResult(rows[:1], np.array([[0.9, 0.5]]), rows[:1], catalogue)
    assert full.found.all() and not np.isnan(full.scores).any()


def test_evaluate_takes_a_predictor_that_is_not_an_index(tmp_path):
    catalogue = xmr.LabelCatalogue.from_records([{"id": "py", "text": "python code"}, {"id": "sql", "text": "sql data"},
                                                 {"id": "cook", "text": "cook food"}])
    test = tmp_path / "test.jsonl"
    rows = [("write python code", ["py"]), ("cook food fast", ["cook"]), ("data in sql", ["py"])]
    test.write_text("".join(json.dumps({"text": text, "labels": labels}) + "\n" for text, labels in rows))
    report = evaluate(KeywordPredictor(catalogue), test, ks=(1, 2))
    assert report["metrics"]["P@1"] == pytest.approx(2 / 3)  # the third query's top word match is sql, not py
    assert report["metrics"]["R@2"] == pytest.approx(1.0)  # py is second for it (one shared word beats cook)
    assert report["structure"] == "word overlap" and report["encoder"] == {}
    # sets {py}, {cook}, {sql}: 2 of 3 decisions right; query 3's true label py is missed
    assert report["set_metrics"]["micro_precision"] == pytest.approx(2 / 3)
    assert report["set_metrics"]["example_f1"] == pytest.approx(2 / 3)
    filtered = evaluate(KeywordPredictor(catalogue), test, ks=(1,), filter_labels={2: {"sql"}})
    assert filtered["set_metrics"]["micro_precision"] == pytest.approx(1.0)  # the filtered pair left the set
    with pytest.raises(XMRError, match="takes query items"):
        evaluate(KeywordPredictor(catalogue), test, query_vectors=np.zeros((3, 4), np.float32))


# ---- version-1 folders (written by the previous release, committed under tests/data) -------------------------------
def v1_vectors():
    rng = np.random.default_rng(12)  # how tests/data/v1-* were built (64 labels, 16-d, unit length)
    vectors = rng.normal(size=(64, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_version_1_folders_load_and_search_as_they_did(tmp_path):
    vectors = v1_vectors()
    flat = xmr.load_index(DATA / "v1-flat")
    assert flat.manifest["format_version"] == 1 and flat.representation["dim"] == 16
    result = flat.search_embeddings(vectors[:8], k=5)
    np.testing.assert_allclose(result.scores, np.sort(vectors[:8] @ vectors.T, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert result.label_ids(3)[0] == "L3" and flat.catalogue.metadata.column("group").to_pylist()[:4] == [0, 1, 2, 0]

    reranked = xmr.load_index(DATA / "v1-ivfpq-rerank")  # IVF-PQ with exact re-rank 20, label L5 removed
    assert [stage["type"] for stage in reranked.manifest["stages"]] == ["faiss", "exact-dense"]
    assert "L5" not in reranked.catalogue and reranked.internal_id("L6") == 6
    hits = reranked.search_embeddings(vectors[:8], k=3)
    kept = [row for row in range(64) if row != 5]
    exact = vectors[:8] @ vectors[kept].T
    np.testing.assert_allclose(hits.scores, np.take_along_axis(exact, hits.rows, axis=1), atol=1e-5)  # exact scores
    assert 5 not in hits.ids

    reranked.save(tmp_path / "upgraded")  # saving writes the current format; the answers stay the same
    upgraded = xmr.load_index(tmp_path / "upgraded")
    assert upgraded.manifest["format_version"] == 2 and upgraded.manifest["labels"]["next_internal_id"] == 64
    np.testing.assert_array_equal(upgraded.search_embeddings(vectors[:8], k=3).ids, hits.ids)


def test_stage_files_must_be_checksummed_and_stage_types_known(tmp_path):
    folder = tmp_path / "flat"
    shutil.copytree(DATA / "v1-flat", folder)
    xmr.load_index(folder).save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["stages"].append({"role": "rerank", "type": "exact-dense", "files": ["vectors.npy"], "depth": 5})
    np.save(folder / "vectors.npy", v1_vectors())
    write_sealed(folder, manifest)
    with pytest.raises(IndexFolderError, match=r"no checksum for \['vectors.npy'\]"):
        xmr.load_index(folder)
    manifest["stages"] = [{**manifest["stages"][0], "type": "mystery"}]
    write_sealed(folder, manifest)
    with pytest.raises(IndexFolderError, match="unknown index stage 'mystery'"):
        xmr.load_index(folder)


def test_a_sharded_folder_keeps_its_saved_id_offsets_and_merges_exactly(tmp_path):
    vectors = v1_vectors()
    catalogue = xmr.load_index(DATA / "v1-flat").catalogue
    halves = [xmr.build_index_from_embeddings(catalogue.take(list(rows)), vectors[rows], None)
              for rows in (range(0, 40), range(40, 64))]
    sharded = xmr.ShardedIndex(halves, id_offsets=[0, 1000])
    sharded.save(tmp_path / "sharded")
    opened = load_predictor(tmp_path / "sharded")
    assert isinstance(opened, xmr.ShardedIndex) and opened.id_offsets.tolist() == [0, 1000]
    result = opened.predict_encoded(vectors[[3, 50]], k=4)
    assert result.ids[1, 0] == 1000 + 10 and result.label_ids(1)[0] == "L50"
    single = xmr.build_index_from_embeddings(catalogue, vectors, None).search_embeddings(vectors[[3, 50]], k=4)
    np.testing.assert_array_equal(result.rows, single.rows)
    np.testing.assert_allclose(result.scores, single.scores, atol=1e-6)
    with pytest.raises(XMRError, match="overlap"):
        xmr.ShardedIndex(halves, id_offsets=[0, 10])


def write_sealed(folder, manifest):
    """Write an edited manifest with a matching digest: a consistent manifest of some other folder, so the checks
    behind the digest are what is tested."""
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
