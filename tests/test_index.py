import copy
import json

import faiss
import numpy as np
import pytest
from conftest import label_records

import xmr
from xmr.errors import IndexFolderError, UnsupportedOperation, XMRError
from xmr.index.folder import manifest_digest, read_manifest


@pytest.fixture
def catalogue(labels_file):
    return xmr.LabelCatalogue.from_file(labels_file)


QUERIES = ["python sql engineer", "drive forklift truck", "cook food kitchen", "repair hydraulic machine"]


@pytest.mark.parametrize(
    ("factory", "params"),
    [("Flat", {}), ("HNSW16", {"efSearch": 64}), ("IVF4,PQ8x4", {"nprobe": 4})],
)
def test_build_save_load_search_round_trip(catalogue, tiny_encoder, tmp_path, factory, params):
    out = tmp_path / "index"
    built = xmr.build_index(catalogue, tiny_encoder, out, factory=factory, search_params=params)
    loaded = xmr.load_index(out)
    assert len(loaded) == len(catalogue) == loaded.candidates.index.ntotal
    manifest = read_manifest(out)
    assert manifest["format_version"] == 2 and manifest["kind"] == "label-index"
    assert manifest["stages"][0]["factory"] == factory and manifest["stages"][0]["type"] == "faiss"
    assert manifest["representation"] == {"kind": "dense", "metric": "inner_product", "dim": 32, "normalized": True}
    assert set(manifest["files"]) == {"index.faiss", "labels.parquet"}
    assert loaded.search(QUERIES[:1], k=1).score == "cosine"
    for name, value in params.items():
        assert loaded.info()["search_parameters"][name] == value
    first, second = built.search(QUERIES, k=5), loaded.search(QUERIES, k=5)
    np.testing.assert_array_equal(first.ids, second.ids)
    np.testing.assert_allclose(first.scores, second.scores, rtol=1e-6)
    assert first.ids.dtype == np.int64 and first.scores.dtype == np.float32
    assert np.all(np.diff(first.scores, axis=1) <= 1e-6)  # best first
    label_id, text, score = second.labels(0)[0]
    assert text == catalogue.texts[catalogue.position(label_id)] and score == pytest.approx(second.scores[0, 0])


def test_exact_search_equals_numpy_brute_force(catalogue, tiny_encoder):
    index = xmr.build_index(catalogue, tiny_encoder, None, factory="Flat")
    labels = tiny_encoder.encode_labels(catalogue.texts)
    queries = tiny_encoder.encode_queries(QUERIES)
    scores = queries @ labels.T
    expected_ids = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    result = index.search_embeddings(queries, k=10)
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, expected_ids, axis=1), rtol=1e-5, atol=1e-6)
    # ids agree wherever scores are not tied
    top = np.take_along_axis(scores, result.ids, axis=1)
    np.testing.assert_allclose(top, result.scores, rtol=1e-5, atol=1e-6)


def test_k_beyond_label_count_is_clamped_and_missing_hits_pad(catalogue, tiny_encoder):
    small = xmr.LabelCatalogue.from_records([{"id": "a", "text": "python"}, {"id": "b", "text": "cook food"}])
    result = xmr.build_index(small, tiny_encoder, None).search(["python"], k=10**9)  # never allocates 10**9 columns
    assert result.ids.shape == (1, 2) and result.found.all()
    assert [hit[0] for hit in result.labels(0)] == ["a", "b"] and result.label_ids(0) == ["a", "b"]
    assert json.dumps(result.to_records())  # JSON-ready
    coarse = xmr.build_index(catalogue, tiny_encoder, None, factory="IVF4,Flat", search_params={"nprobe": 1})
    probed = coarse.search(["python"], k=len(catalogue))  # one of four lists holds fewer than all labels
    assert 0 < probed.found.sum() < len(catalogue)
    assert (probed.ids[~probed.found] == -1).all() and np.isnan(probed.scores[~probed.found]).all()
    assert probed.found[0, :probed.found.sum()].all()  # hits first, padding after


def test_bad_query_shapes_and_k(catalogue, tiny_encoder):
    index = xmr.build_index(catalogue, tiny_encoder, None)
    with pytest.raises(XMRError, match="got dense with dim 16; expected dim 32"):
        index.search_embeddings(np.zeros((2, 16), dtype=np.float32))
    with pytest.raises(XMRError, match="k must be a positive integer"):
        index.search(["python"], k=0)
    assert index.search_embeddings(np.ones(32, dtype=np.float32), k=3).ids.shape == (1, 3)


def test_query_time_parameters_apply_once_and_unknown_ones_are_refused(catalogue, tiny_encoder):
    index = xmr.build_index(catalogue, tiny_encoder, None, factory="HNSW8", search_params={"efSearch": 40})
    index.search(QUERIES, k=5, efSearch=200)
    assert index.info()["search_parameters"]["efSearch"] == 40
    with pytest.raises(XMRError, match=r"\['nprobe'\] do not apply"):
        index.search(QUERIES, k=5, nprobe=3)
    index.set_search_params(efSearch=80)
    assert index.manifest["stages"][0]["search_params"]["efSearch"] == 80


def test_ivf_trains_on_a_sample(catalogue, tiny_encoder):
    index = xmr.build_index(catalogue, tiny_encoder, None, factory="IVF4,Flat", train_size=100)
    assert index.manifest["stages"][0]["trained_on"] == 100
    with pytest.raises(XMRError, match="invalid FAISS factory string 'Bogus12'"):
        xmr.build_index(catalogue, tiny_encoder, None, factory="Bogus12")


def test_add_and_remove_keep_ids_stable(catalogue, tiny_encoder, tmp_path):
    out = tmp_path / "index"
    xmr.build_index(catalogue, tiny_encoder, out, factory="Flat")
    index = xmr.load_index(out, encoder=tiny_encoder)
    new_ids = index.add([{"id": 1000, "text": "zebra xylophone quartz"}])
    assert new_ids.tolist() == [len(catalogue)]
    hit = index.search(["zebra xylophone quartz"], k=1)
    assert hit.label_ids(0) == [1000] and hit.ids[0, 0] == len(catalogue)
    with pytest.raises(xmr.CatalogueError, match="already in the catalogue"):
        index.add([{"id": 1000, "text": "again"}])
    assert index.remove([0, 1000]) == 2
    assert 0 not in index.catalogue and len(index) == len(catalogue) - 1
    index.save()
    reloaded = xmr.load_index(out)
    result = reloaded.search_embeddings(tiny_encoder.encode_queries([catalogue.texts[5]]), k=1)
    assert result.label_ids(0) == [catalogue.ids[5]] and result.ids[0, 0] == 5  # ids survive removal
    with pytest.raises(XMRError, match="not in"):
        reloaded.remove([123456])


def test_remove_from_hnsw_is_refused_and_changes_nothing(catalogue, tiny_encoder):
    index = xmr.build_index(catalogue, tiny_encoder, None, factory="HNSW8")
    with pytest.raises(UnsupportedOperation, match="cannot remove"):
        index.remove([3])
    assert len(index) == len(catalogue) == index.candidates.index.ntotal


def test_corrupted_or_tampered_folders_are_refused(catalogue, tiny_encoder, tmp_path):
    out = tmp_path / "index"
    xmr.build_index(catalogue, tiny_encoder, out)
    original = (out / "index.faiss").read_bytes()
    data = bytearray(original)
    data[-10] ^= 0xFF
    (out / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexFolderError, match="index.faiss: checksum mismatch"):
        xmr.load_index(out)
    (out / "index.faiss").write_bytes(original + b"x")
    with pytest.raises(IndexFolderError, match=r"index.faiss: size \d+ != \d+"):
        xmr.load_index(out)
    (out / "index.faiss").write_bytes(original)
    (out / "labels.parquet").unlink()
    with pytest.raises(IndexFolderError, match="labels.parquet: missing"):
        xmr.load_index(out)
    (out / "manifest.json").write_text("{broken")
    with pytest.raises(IndexFolderError, match="corrupted manifest"):
        xmr.load_index(out)
    with pytest.raises(IndexFolderError, match="no manifest.json"):
        xmr.load_index(tmp_path)


def test_mismatched_encoder_dim_or_metric_is_refused(catalogue, tiny_encoder, tiny_model, tmp_path):
    out = tmp_path / "index"
    xmr.build_index(catalogue, tiny_encoder, out)
    with pytest.raises(IndexFolderError, match="query_prompt: index '' vs encoder 'python '"):
        xmr.load_index(out, encoder=xmr.load_encoder(tiny_model, query_prompt="python "))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["representation"]["dim"] = 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match="manifest was modified after it was written"):
        xmr.load_index(out)
    write_sealed(out, manifest)
    with pytest.raises(IndexFolderError, match="index.faiss has dim 32, manifest says 64"):
        xmr.load_index(out)
    manifest["representation"]["dim"], manifest["representation"]["metric"] = 32, "hamming"
    write_sealed(out, manifest)
    with pytest.raises(IndexFolderError, match="unknown representation or metric"):
        xmr.load_index(out)
    manifest["representation"]["metric"] = "inner_product"
    write_sealed(out, manifest)
    with pytest.raises(IndexFolderError, match="holds dim 32, the encoder gives 16"):
        xmr.load_index(out, encoder=dim_changed(tiny_encoder))
    flat_l2 = faiss.IndexIDMap2(faiss.IndexFlatL2(32))
    faiss.write_index(flat_l2, str(out / "index.faiss"))
    manifest["files"]["index.faiss"]["bytes"] = (out / "index.faiss").stat().st_size  # sizes are checked always
    write_sealed(out, manifest)
    with pytest.raises(IndexFolderError, match="metric does not match"):
        xmr.load_index(out, verify=False)


def dim_changed(encoder):
    """The same encoder claiming another output size (what a different model would give)."""
    changed = copy.copy(encoder)
    changed.representation_spec = lambda: {**encoder.representation_spec(), "dim": 16}
    return changed


def test_interrupted_build_leaves_the_old_index(catalogue, tiny_encoder, tmp_path, monkeypatch):
    out = tmp_path / "index"
    xmr.build_index(catalogue, tiny_encoder, out)
    before = (out / "manifest.json").read_text()
    from xmr.index import label_index

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(label_index.pq, "write_table", crash)
    bigger = xmr.LabelCatalogue.from_records(label_records(400, seed=1))
    with pytest.raises(KeyboardInterrupt):
        xmr.build_index(bigger, tiny_encoder, out)
    assert (out / "manifest.json").read_text() == before
    assert len(xmr.load_index(out)) == len(catalogue)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index", "labels.jsonl"]  # no temp leftovers


def test_rebuild_replaces_index_but_never_a_foreign_folder(catalogue, tiny_encoder, tmp_path):
    out = tmp_path / "index"
    xmr.build_index(catalogue, tiny_encoder, out)
    smaller = xmr.LabelCatalogue.from_records(label_records(50, seed=2))
    xmr.build_index(smaller, tiny_encoder, out)
    assert len(xmr.load_index(out)) == 50
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"x")
    with pytest.raises(IndexFolderError, match="not an xmr index folder; refusing"):
        xmr.build_index(smaller, tiny_encoder, foreign)
    assert (foreign / "me.jpg").exists()


def test_string_ids_and_metadata_survive_the_folder(tiny_encoder, tmp_path):
    records = [{"id": f"skill/{i}", "text": text, "group": i % 2} for i, text in
               enumerate(["python sql", "cook food", "drive truck"])]
    xmr.build_index(xmr.LabelCatalogue.from_records(records), tiny_encoder, tmp_path / "ix")
    index = xmr.load_index(tmp_path / "ix")
    assert index.catalogue.ids == ["skill/0", "skill/1", "skill/2"]
    assert index.catalogue.metadata.column("group").to_pylist() == [0, 1, 0]
    assert index.manifest["labels"]["id_type"] == "str"
    assert index.search(["cook food"], k=1).label_ids(0) == ["skill/1"]


def test_index_from_precomputed_vectors(catalogue, tiny_encoder, tmp_path):
    vectors = tiny_encoder.encode_labels(catalogue.texts)
    with_encoder = xmr.build_index_from_embeddings(catalogue, vectors, tmp_path / "a", encoder=tiny_encoder)
    assert with_encoder.manifest["encoder"] == tiny_encoder.identity()
    assert xmr.load_index(tmp_path / "a").search([catalogue.texts[4]], k=1).label_ids(0) == [catalogue.ids[4]]
    bare = xmr.build_index_from_embeddings(catalogue, vectors, tmp_path / "b")
    assert bare.representation["normalized"] is True and bare.manifest["encoder"]["type"] == "none"
    loaded = xmr.load_index(tmp_path / "b")
    assert loaded.search_embeddings(vectors[7], k=1).ids[0, 0] == 7
    with pytest.raises(XMRError, match="without an encoder; query it with search_embeddings"):
        loaded.search(["python"])
    with pytest.raises(XMRError, match="299 label rows for 300 labels"):
        xmr.build_index_from_embeddings(catalogue, vectors[:-1], None)


def write_sealed(folder, manifest):
    """Write an edited manifest with a matching digest: a consistent manifest of some other folder, so the checks
    behind the digest are what is tested."""
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
