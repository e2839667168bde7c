"""Fast queries: a static query encoder stored in an index folder, used on request, refused when it does not match."""

import json
import shutil

import numpy as np
import pytest
from conftest import label_records

import xmr
from xmr.cli import main
from xmr.encoders.onnx_runtime import onnx_backend_problem
from xmr.encoders.static import StaticEmbeddingEncoder, write_static_files
from xmr.errors import EncoderError, IndexFolderError, XMRError
from xmr.index import build_index, load_index
from xmr.index.fast_queries import FILES, SECTION, onnx_int8_queries

QUERIES = ["python sql data", "forklift driving warehouse", "kitchen food repair"]


def static_from(teacher, folder, distilled_from=None, dim=None):
    """A static table over the teacher's tokenizer (its input embeddings, or random ones of another size)."""
    table = teacher.model[0].auto_model.get_input_embeddings().weight.detach().numpy()
    if dim is not None:
        table = np.random.default_rng(0).normal(size=(len(table), dim)).astype(np.float32)
    vectors, tokenizer = write_static_files(table, teacher.model.tokenizer.backend_tokenizer.to_str(), folder)
    return StaticEmbeddingEncoder(str(vectors), str(tokenizer),
                                  distilled_from=teacher.identity() if distilled_from is None else distilled_from)


@pytest.fixture
def index(tmp_path, tiny_encoder):
    catalogue = xmr.LabelCatalogue.from_records(label_records(60))
    return build_index(catalogue, tiny_encoder, tmp_path / "index")


def test_fast_queries_change_the_encoder_used_and_its_vectors(index, tiny_encoder, tmp_path):
    static = static_from(tiny_encoder, tmp_path / "static")
    index.attach_fast_queries(static)
    teacher_vectors = index.encode_queries(QUERIES).values
    np.testing.assert_allclose(teacher_vectors, tiny_encoder.encode_queries(QUERIES), atol=1e-6)
    index.use_fast_queries()
    fast_vectors = index.encode_queries(QUERIES).values
    np.testing.assert_allclose(fast_vectors, static.encode_queries(QUERIES), atol=1e-6)
    assert not np.allclose(fast_vectors, teacher_vectors, atol=1e-3)
    fast = index.search(QUERIES, k=5)
    expected = index.search_embeddings(static.encode_queries(QUERIES), k=5)
    np.testing.assert_array_equal(fast.ids, expected.ids)
    assert index.describe()["query_encoder"]["vectors_sha256"] == static.vectors_sha256
    index.use_fast_queries(False)
    np.testing.assert_array_equal(index.search(QUERIES, k=5).ids,
                                  index.search_embeddings(tiny_encoder.encode_queries(QUERIES), k=5).ids)


def test_folder_with_fast_queries_round_trips(index, tiny_encoder, tmp_path):
    static = static_from(tiny_encoder, tmp_path / "static")
    index.attach_fast_queries(static)
    index.save()
    shutil.rmtree(tmp_path / "static")  # the folder holds its own copy
    reopened = load_index(index.path, fast_queries=True)
    assert reopened.manifest[SECTION]["encoder"]["vectors_sha256"] == static.vectors_sha256
    assert set(FILES.values()) <= set(reopened.manifest["files"])  # checksummed like every file
    np.testing.assert_allclose(reopened.encode_queries(QUERIES).values, static.encode_queries(QUERIES), atol=1e-6)
    assert not load_index(index.path).fast_queries  # off unless asked for
    moved = reopened.save(tmp_path / "copy")  # a loaded folder writes its fast queries into a new folder
    np.testing.assert_allclose(load_index(moved, fast_queries=True).encode_queries(QUERIES).values,
                               static.encode_queries(QUERIES), atol=1e-6)
    table = moved / FILES["vectors"]
    table.write_bytes(table.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IndexFolderError, match="fast_queries.safetensors"):
        load_index(moved, fast_queries=True)


def test_mismatched_fast_query_encoder_is_refused(index, tiny_encoder, tmp_path):
    other_teacher = tiny_encoder.identity() | {"query_prompt": "query: "}
    with pytest.raises(IndexFolderError, match="made from another encoder.*query_prompt"):
        index.attach_fast_queries(static_from(tiny_encoder, tmp_path / "other", distilled_from=other_teacher))
    with pytest.raises(IndexFolderError, match="dim 32, the encoder gives 16"):
        index.attach_fast_queries(static_from(tiny_encoder, tmp_path / "small", dim=16))
    with pytest.raises(IndexFolderError, match="no fast query encoder"):
        load_index(index.path, fast_queries=True)
    # a folder whose section names another teacher (manifest re-stamped so only this check can refuse it)
    index.attach_fast_queries(static_from(tiny_encoder, tmp_path / "static"))
    index.save()
    from xmr.index.folder import manifest_digest

    path = index.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[SECTION]["encoder"]["distilled_from"]["max_seq_length"] = 7
    manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    assert load_index(index.path).search(QUERIES, k=3).ids.shape == (3, 3)  # the index itself still opens
    with pytest.raises(IndexFolderError, match="made from another encoder.*max_seq_length"):
        load_index(index.path, fast_queries=True)


def test_static_encoder_refuses_a_table_that_does_not_fit_its_tokenizer(tiny_encoder, tmp_path):
    table = np.zeros((5, 8), dtype=np.float32)
    vectors, tokenizer = write_static_files(table, tiny_encoder.model.tokenizer.backend_tokenizer.to_str(), tmp_path)
    with pytest.raises(EncoderError, match="vectors.safetensors"):
        StaticEmbeddingEncoder(str(vectors), str(tokenizer))
    static = static_from(tiny_encoder, tmp_path / "folder-source")
    folder = static.save(tmp_path / "encoder")
    again = xmr.load_encoder(folder)  # an encoder folder, paths relative to it
    assert again.identity() == static.identity()
    np.testing.assert_allclose(again.encode_queries(QUERIES), static.encode_queries(QUERIES))


def test_cli_fast_queries_distils_fits_and_queries(index, tiny_encoder, tmp_path, capsys):
    pytest.importorskip("model2vec.distill", reason="model2vec's distill extra (xmr[fast]) is not installed",
                        exc_type=ImportError)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(record) + "\n" for record in label_records(300, seed=5)))
    assert main(["query", str(index.path), "--fast-queries", "python"]) == 2
    assert "no fast query encoder" in capsys.readouterr().err
    assert main(["fast-queries", str(index.path), "--corpus", str(corpus), "--max-epochs", "20"]) == 0
    fitted = load_index(index.path, fast_queries=True)
    assert fitted.fast_query_encoder.distilled_from == tiny_encoder.identity()
    assert fitted.fast_query_encoder.distillation["corpus"] == 300
    assert main(["fast-queries", str(index.path), "--out", str(tmp_path / "plain")]) == 0  # distil only
    plain = load_index(tmp_path / "plain", fast_queries=True)
    texts = [record["text"] for record in label_records(300, seed=5)]
    teacher = tiny_encoder.encode_queries(texts)

    def cosine(encoder):
        return float(np.mean(np.sum(encoder.encode_queries(texts) * teacher, axis=1)))

    assert cosine(fitted.fast_query_encoder) > cosine(plain.fast_query_encoder) + 0.05  # fitting moves it closer
    capsys.readouterr()
    assert main(["query", str(index.path), "--fast-queries", "--json", "-k", "2", "python sql"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    expected = fitted.search_embeddings(fitted.fast_query_encoder.encode_queries(["python sql"]), k=2)
    assert [hit["id"] for hit in hits] == expected.label_ids(0)


def test_fast_queries_refuse_other_teachers(tiny_encoder, tmp_path):
    from xmr.encoders.distill import distill_static

    with pytest.raises(EncoderError, match="sentence-transformers encoder"):
        distill_static(static_from(tiny_encoder, tmp_path / "s"), tmp_path / "out")
    with pytest.raises(XMRError):
        load_index(tmp_path / "missing", fast_queries=True)


@pytest.fixture
def own_model_index(tiny_model, tmp_path, monkeypatch):
    """An index whose encoder is a copy of the tiny model (ONNX exports go inside the copy, not the shared one)."""
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    encoder = xmr.load_encoder(str(shutil.copytree(tiny_model, tmp_path / "model")), device="cpu")
    return build_index(xmr.LabelCatalogue.from_records(label_records(60)), encoder, tmp_path / "index")


@pytest.mark.skipif(onnx_backend_problem() is not None, reason=f"ONNX backend: {onnx_backend_problem()}")
def test_onnx_int8_fast_queries_are_the_encoder_quantised_and_truncated(own_model_index, tmp_path):
    index = own_model_index
    assert main(["fast-queries", str(index.path), "--method", "onnx-int8", "--max-seq-length", "8",
                 "--out", str(tmp_path / "int8")]) == 0
    reopened = load_index(tmp_path / "int8", fast_queries=True)
    fast = reopened.fast_query_encoder
    assert (fast.backend, fast.quantize, fast.max_seq_length) == ("onnx", "int8", 8)
    assert reopened.manifest[SECTION]["method"] == "onnx-int8" and reopened.manifest[SECTION]["files"] == []
    queries = [" ".join([query] * 5) for query in QUERIES]  # 15 words: the 8-token limit cuts them
    teacher = index.encoder.encode_queries(queries)
    untruncated = onnx_int8_queries(index.encoder).encode_queries(queries)
    truncated = reopened.encode_queries(queries).values
    assert np.all(np.sum(untruncated * teacher, axis=1) > 0.9) and not np.allclose(untruncated, teacher, atol=1e-4)
    assert not np.allclose(truncated, untruncated, atol=1e-3)
    np.testing.assert_array_equal(reopened.search(queries, k=5).ids,
                                  reopened.search_embeddings(truncated, k=5).ids)
    assert reopened.describe()["query_encoder"]["quantize"] == "int8"


@pytest.mark.skipif(onnx_backend_problem() is not None, reason=f"ONNX backend: {onnx_backend_problem()}")
def test_onnx_int8_fast_queries_of_another_encoder_are_refused(own_model_index, capsys):
    index = own_model_index
    other = xmr.load_encoder(index.encoder.config() | {"query_prompt": "query: "})
    with pytest.raises(IndexFolderError, match="made from another encoder.*differs in: query_prompt"):
        index.attach_fast_queries(onnx_int8_queries(other))
    assert main(["fast-queries", str(index.path), "--method", "onnx-int8", "--corpus", "train.jsonl"]) == 2
    assert "onnx-int8 fast queries are not fitted" in capsys.readouterr().err
    assert main(["fast-queries", str(index.path), "--max-seq-length", "8"]) == 2  # static reads 512 tokens anyway
    assert "it is for --method onnx-int8" in capsys.readouterr().err


def long_queries(count: int, seed: int) -> list[str]:
    """Label texts repeated three times: longer than the students' 6-token limit, so truncation loses words."""
    return [" ".join([record["text"]] * 3) for record in label_records(count, seed=seed)]


def test_a_distilled_student_is_closer_to_its_teacher_than_the_cut_untrained_one(tiny_encoder, tmp_path):
    pytest.importorskip("datasets", reason="the student's trainer needs xmr[train]")
    from xmr.encoders.student import StudentEncoder, distill_student

    corpus, held_out = long_queries(200, seed=1), long_queries(50, seed=2)
    options = {key: value for key, value in tiny_encoder.config().items() if key not in ("type", "dim")}
    cut = StudentEncoder(layers=[1], **options | {"max_seq_length": 6})
    student = distill_student(tiny_encoder, tmp_path / "student", corpus, layers=[1], max_seq_length=6, epochs=5,
                              learning_rate=1e-3)
    assert (student.layers, student.max_seq_length) == ([1], 6)
    assert len(student.model[0].auto_model.encoder.layer) == 1
    losses = student.distillation["loss_by_epoch"]
    assert len(losses) == 5 and losses[-1] < losses[0]  # the MSE to the teacher's vectors falls
    teacher = tiny_encoder.encode_queries(held_out)

    def cosine(encoder):
        return float(np.mean(np.sum(encoder.encode_queries(held_out) * teacher, axis=1)))

    assert cosine(student) > cosine(cut) + 0.01  # on texts it was not trained on
    folder = student.save(tmp_path / "encoder")  # an encoder folder: weights and a config naming the teacher
    again = xmr.load_encoder(folder)
    assert again.identity() == student.identity()
    np.testing.assert_allclose(again.encode_queries(held_out), student.encode_queries(held_out), atol=1e-6)
    with pytest.raises(EncoderError, match="distinct indices of the teacher's 2 transformer layers"):
        StudentEncoder(layers=[0, 2], **options)
    with pytest.raises(EncoderError, match="not this student's weights"):
        StudentEncoder(layers=[0, 1], weights=str(folder / "student.safetensors"), **options)


@pytest.mark.skipif(onnx_backend_problem() is not None, reason=f"ONNX backend: {onnx_backend_problem()}")
def test_student_fast_queries_run_on_int8_from_the_index_folder(own_model_index, tmp_path, capsys):
    pytest.importorskip("datasets", reason="the student's trainer needs xmr[train]")
    from xmr.index.fast_queries import STUDENT_FILES

    index = own_model_index
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in long_queries(100, seed=3)))
    out = tmp_path / "student-index"
    assert main(["fast-queries", str(index.path), "--method", "student", "--corpus", str(corpus), "--layers", "1",
                 "--max-seq-length", "6", "--max-epochs", "2", "--out", str(out)]) == 0
    assert "1-layer student" in capsys.readouterr().out
    reopened = load_index(out, fast_queries=True)
    fast = reopened.fast_query_encoder
    assert (type(fast).__name__, fast.backend, fast.quantize, fast.layers, fast.max_seq_length) == (
        "StudentEncoder", "onnx", "int8", [1], 6)
    assert reopened.manifest[SECTION]["files"] == list(STUDENT_FILES.values())
    assert set(STUDENT_FILES.values()) <= set(reopened.manifest["files"])  # checksummed like every file
    assert fast.onnx_root.parent == tmp_path / "cache" / "onnx"  # exported to the cache: not the teacher's export
    assert not (out / "onnx").exists() and not (tmp_path / "model" / "onnx").exists()
    torch_student = xmr.load_encoder(fast.config() | {"backend": "torch", "quantize": None})
    queries = long_queries(5, seed=4)
    assert np.all(np.sum(fast.encode_queries(queries) * torch_student.encode_queries(queries), axis=1) > 0.98)
    np.testing.assert_array_equal(reopened.search(queries, k=5).ids,
                                  reopened.search_embeddings(fast.encode_queries(queries), k=5).ids)
    weights = out / STUDENT_FILES["weights"]
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IndexFolderError, match=STUDENT_FILES["weights"]):
        load_index(out, fast_queries=True)


def test_student_fast_queries_refuse_bad_requests(own_model_index, tmp_path, capsys):
    from xmr.encoders.student import StudentEncoder

    index = own_model_index
    options = {key: value for key, value in index.encoder.config().items() if key not in ("type", "dim")}
    with pytest.raises(IndexFolderError, match="no trained weights"):
        index.attach_fast_queries(StudentEncoder(layers=[0], **options, distilled_from=index.encoder.identity()))
    other = StudentEncoder(layers=[0], **options, distilled_from=index.encoder.identity() | {"query_prompt": "q: "})
    with pytest.raises(IndexFolderError, match="made from another encoder.*query_prompt"):
        index.attach_fast_queries(other)
    assert main(["fast-queries", str(index.path), "--method", "student"]) == 2
    assert "--corpus: a student is distilled" in capsys.readouterr().err
    assert main(["fast-queries", str(index.path), "--layers", "0"]) == 2
    assert "it is for --method student" in capsys.readouterr().err
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("python sql data\n")
    assert main(["fast-queries", str(index.path), "--method", "student", "--corpus", str(corpus), "--layers",
                 "7"]) == 2
    assert "layers [7]: distinct indices" in capsys.readouterr().err.strip()
