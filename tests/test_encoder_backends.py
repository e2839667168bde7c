"""The sentence-transformers encoder's inference backends: ONNX Runtime fp32 and int8 next to PyTorch.

Exports always go to temporary folders (XMR_CACHE, xmr's one cache root, is pointed at one; local models are tmp
copies), never into site-packages or the repository. Tests that need the ONNX backend skip, saying why, where it
cannot run.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import xmr
from xmr.encoders import onnx_runtime as onnx_module
from xmr.encoders.base import ENCODER_FILE
from xmr.encoders.bundled import DEFAULT_TEXT_MODEL, resolve_model_location
from xmr.errors import EncoderError, IndexFolderError
from xmr.index.label_index import check_encoder

ONNX_PROBLEM = onnx_module.onnx_backend_problem()
needs_onnx = pytest.mark.skipif(ONNX_PROBLEM is not None, reason=f"ONNX backend unavailable: {ONNX_PROBLEM}")

SENTENCES = [
    "experienced forklift driver for the night shift",
    "senior Python developer with cloud experience",
    "prepare the monthly financial statements and budget reports",
    "teach music to primary school children",
]
LABELS = ["operate forklift", "Python (computer programming)", "prepare financial statements", "teach music"]
QUERIES = ["forklift driving", "experience with python", "reconcile the monthly accounts", "piano lessons for kids"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def onnx_files(folder: Path) -> dict[str, int]:
    """ONNX files under a folder and their mtimes."""
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*.onnx")}


# ---- config validation and identity: no ONNX Runtime needed -------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"backend": "tensorflow"}, "backend must be one of 'torch', 'onnx', got 'tensorflow'"),
    ({"backend": "onnx", "quantize": "int4"}, "quantize must be None or 'int8', got 'int4'"),
    ({"quantize": "int8"}, "quantize='int8' needs backend='onnx'"),
    ({"backend": "openvino"}, "backend 'openvino' is not supported"),
])
def test_bad_backend_or_quantize_is_refused_naming_the_field(tiny_model, options, message):
    with pytest.raises(EncoderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        xmr.load_encoder({"type": "sentence-transformers", "model": tiny_model, **options})


def test_missing_onnx_runtime_says_what_to_install(tiny_model, monkeypatch):
    monkeypatch.setattr(onnx_module, "onnx_backend_problem", lambda: "onnxruntime is not installed")
    with pytest.raises(EncoderError, match=r"onnxruntime is not installed; pip install 'xmr\[onnx\]'"):
        xmr.load_encoder({"type": "sentence-transformers", "model": tiny_model, "backend": "onnx"})


def test_torch_config_records_backend_but_identity_matches_older_indexes(tiny_encoder):
    config = tiny_encoder.config()
    assert config["backend"] == "torch" and config["quantize"] is None
    identity = tiny_encoder.identity()
    assert "backend" not in identity and "quantize" not in identity  # indexes built before these keys still match
    index = xmr.build_index(xmr.LabelCatalogue.from_records([{"id": 0, "text": "python"}]), tiny_encoder, None)
    check_encoder(tiny_encoder, index.manifest, "old")
    int8_manifest = index.manifest | {"encoder": index.manifest["encoder"] | {"backend": "onnx", "quantize": "int8"}}
    with pytest.raises(IndexFolderError, match="backend: index 'onnx' vs encoder None.*quantize: index 'int8'"):
        check_encoder(tiny_encoder, int8_manifest, "int8-index")


def test_exports_of_installed_models_go_under_the_xmr_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # not xmr's: ignored
    bundled = resolve_model_location(DEFAULT_TEXT_MODEL)
    root = onnx_module.export_root(DEFAULT_TEXT_MODEL, bundled, onnx_module.source_fingerprint(bundled))
    assert root.parent == tmp_path / "cache" / "onnx" and root.name.startswith("all-MiniLM-L6-v2-")


# ---- a local model folder: exports go inside it ------------------------------------------------------------------
@pytest.fixture
def model_copy(tiny_model, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


@needs_onnx
def test_local_folder_export_is_cached_inside_it_and_redone_after_retraining(model_copy, tmp_path):
    config = {"type": "sentence-transformers", "model": str(model_copy), "backend": "onnx", "quantize": "int8"}
    encoder = xmr.load_encoder(config, device="cpu")
    assert encoder.onnx_root == model_copy and encoder.onnx_file == "onnx/model_qint8.onnx"
    exported = onnx_files(model_copy)
    assert set(exported) == {"onnx/model.onnx", "onnx/model_qint8.onnx"}
    assert not (tmp_path / "cache").exists()
    assert not [path.name for path in model_copy.iterdir() if path.name.startswith(".xmr-onnx-export-")]
    stamp = json.loads((model_copy / "onnx" / onnx_module.EXPORT_STAMP).read_text())
    assert set(stamp) == {"model.onnx", Path(encoder.onnx_file).name}

    again = xmr.load_encoder(config, device="cpu")  # no re-export
    assert onnx_files(model_copy) == exported
    np.testing.assert_allclose(again.encode_queries(["python sql"]), encoder.encode_queries(["python sql"]))

    torch_encoder = xmr.load_encoder(str(model_copy), device="cpu")
    torch_encoder.model.save(str(model_copy))  # "retrained" weights written into the same folder
    xmr.load_encoder(config, device="cpu")
    assert onnx_files(model_copy)[encoder.onnx_file] != exported[encoder.onnx_file]


@needs_onnx
def test_onnx_runs_the_same_module_stack_as_torch(model_copy):
    """Only the network moves to ONNX Runtime (prompts, pooling, normalisation stay sentence-transformers'): fp32
    gives torch's vectors, prompted as on torch, and int8 close ones that are not the same."""
    options = {"type": "sentence-transformers", "model": str(model_copy), "query_prompt": "query: "}
    torch_encoder = xmr.load_encoder(options, device="cpu")
    fp32 = xmr.load_encoder(options | {"backend": "onnx"}, device="cpu")
    int8 = xmr.load_encoder(options | {"backend": "onnx", "quantize": "int8"}, device="cpu")
    for side in ("encode_queries", "encode_labels"):
        np.testing.assert_allclose(getattr(fp32, side)(SENTENCES), getattr(torch_encoder, side)(SENTENCES),
                                   atol=1e-5)
    assert not np.allclose(fp32.encode_queries(SENTENCES), fp32.encode_labels(SENTENCES), atol=1e-3)
    expected, quantized = torch_encoder.encode_queries(SENTENCES), int8.encode_queries(SENTENCES)
    assert np.all(cosines(quantized, expected) > 0.9) and not np.allclose(quantized, expected, atol=1e-4)


@needs_onnx
def test_onnx_encoder_refuses_training_and_saving(model_copy, tmp_path):
    encoder = xmr.load_encoder({"type": "sentence-transformers", "model": str(model_copy), "backend": "onnx"})
    encoder.train_mode(False)  # inference mode is what ONNX always is
    for call in (lambda: encoder.train_mode(True), lambda: encoder.embed(["python"], "query"),
                 encoder.parameter_groups, lambda: encoder.save(tmp_path / "saved")):
        with pytest.raises(EncoderError, match="needs backend 'torch'; this encoder runs on backend 'onnx'"):
            call()


@needs_onnx
def test_encoder_folder_config_selects_the_backend(tiny_encoder, tmp_path, monkeypatch):
    """Train with torch, save, then serve the same folder with int8 ONNX by editing its xmr_encoder.json."""
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    folder = tiny_encoder.save(tmp_path / "encoder")
    config = json.loads((folder / ENCODER_FILE).read_text())
    assert config["backend"] == "torch" and config["quantize"] is None
    (folder / ENCODER_FILE).write_text(json.dumps(config | {"backend": "onnx", "quantize": "int8"}))
    encoder = xmr.load_encoder(folder)
    assert (encoder.backend, encoder.quantize) == ("onnx", "int8")
    assert encoder.onnx_root == (folder / "model").resolve()
    assert cosines(encoder.encode_labels(["python sql"]), tiny_encoder.encode_labels(["python sql"]))[0] > 0.9


# ---- the bundled MiniLM: exports go to the user cache, never into site-packages ----------------------------------
@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """Torch, ONNX fp32 and ONNX int8 MiniLM encoders, exported into a temporary xmr cache root."""
    if ONNX_PROBLEM is not None:
        pytest.skip(f"ONNX backend unavailable: {ONNX_PROBLEM}")
    bundled = Path(resolve_model_location(DEFAULT_TEXT_MODEL))
    bundled_before = onnx_files(bundled)
    cache = tmp_path_factory.mktemp("xmr-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XMR_CACHE", str(cache))
        encoders = {quantize: xmr.load_encoder({"type": "sentence-transformers", "backend": "onnx",
                                                "quantize": quantize}, device="cpu") for quantize in (None, "int8")}
        encoders["torch"] = xmr.load_encoder(DEFAULT_TEXT_MODEL, device="cpu")
        yield encoders | {"cache": cache}
    assert onnx_files(bundled) == bundled_before  # nothing written next to the installed model


@pytest.mark.slow
def test_onnx_fp32_matches_torch(minilm):
    torch_vectors, onnx_vectors = (minilm[key].encode_queries(SENTENCES) for key in ("torch", None))
    assert np.all(cosines(torch_vectors, onnx_vectors) > 1 - 1e-4)
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4)


@pytest.mark.slow
def test_int8_stays_close_to_torch_and_ranks_the_same(minilm):
    torch_encoder, int8 = minilm["torch"], minilm["int8"]
    assert np.all(cosines(torch_encoder.encode_queries(SENTENCES), int8.encode_queries(SENTENCES)) > 0.98)
    catalogue = xmr.LabelCatalogue.from_records([{"id": i, "text": text} for i, text in enumerate(LABELS)])
    top1 = [xmr.build_index(catalogue, encoder, None).search(QUERIES, k=1).ids[:, 0].tolist()
            for encoder in (torch_encoder, int8)]
    assert top1[0] == top1[1] == [0, 1, 2, 3]


@pytest.mark.slow
def test_an_int8_vector_does_not_depend_on_the_texts_batched_with_it(minilm):
    # dynamic int8 takes one activation scale per tensor: batched with a long text (more padding, larger
    # activations) a short query would get a coarser one; each text runs alone, so its vector is its own
    int8 = minilm["int8"]
    long_text = " ".join(SENTENCES * 6)
    alone = np.stack([int8.encode_queries([query])[0] for query in QUERIES])
    batched = int8.encode_queries([*QUERIES, long_text])[:len(QUERIES)]
    np.testing.assert_allclose(batched, alone, atol=1e-6)
    fp32 = minilm[None]  # fp32 needs no such care: batching moves its vectors by float rounding only
    np.testing.assert_allclose(fp32.encode_queries([*QUERIES, long_text])[:len(QUERIES)],
                               np.stack([fp32.encode_queries([query])[0] for query in QUERIES]), atol=1e-5)


@pytest.mark.slow
def test_bundled_export_is_cached_in_the_user_cache_and_reused(minilm):
    int8 = minilm["int8"]
    root = minilm["cache"] / "onnx"
    assert int8.onnx_root.parent == root and int8.onnx_root.name.startswith("all-MiniLM-L6-v2-")
    exported = onnx_files(int8.onnx_root)
    assert set(exported) == {"onnx/model.onnx", int8.onnx_file}
    again = xmr.load_encoder({"type": "sentence-transformers", "backend": "onnx", "quantize": "int8"})
    assert again.onnx_root == int8.onnx_root and onnx_files(int8.onnx_root) == exported  # not exported again
    assert [path.name for path in root.iterdir()] == [int8.onnx_root.name]  # no staging folder left behind


@pytest.mark.slow
def test_index_manifest_records_int8_and_refuses_another_backend(minilm, tmp_path):
    int8, torch_encoder = minilm["int8"], minilm["torch"]
    catalogue = xmr.LabelCatalogue.from_records([{"id": i, "text": text} for i, text in enumerate(LABELS)])
    xmr.build_index(catalogue, int8, tmp_path / "index")
    loaded = xmr.load_index(tmp_path / "index")
    assert loaded.manifest["encoder"]["backend"] == "onnx" and loaded.manifest["encoder"]["quantize"] == "int8"
    assert loaded.encoder.identity() == int8.identity()
    assert loaded.search(QUERIES[:1], k=1).ids[0, 0] == 0
    with pytest.raises(IndexFolderError, match="backend: index 'onnx' vs encoder None"):
        xmr.load_index(tmp_path / "index", encoder=torch_encoder)
    with pytest.raises(IndexFolderError, match="quantize: index 'int8' vs encoder None"):
        xmr.load_index(tmp_path / "index", encoder=minilm[None])
