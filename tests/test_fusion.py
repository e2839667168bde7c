"""ViXML early fusion: image tower, projection into the text encoder's input, fallbacks, cache, persistence."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import xmr
from xmr.encoders.image import ImageTower
from xmr.errors import EncoderError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
TEXTS = ["python sql", "cook food kitchen music", "drive"]


@pytest.fixture(params=["sentence-transformers", "decoder-llm"])
def fused(request, tiny_model, tiny_decoder, tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    text = {"type": request.param, "model": tiny_model if request.param == "sentence-transformers" else tiny_decoder}
    return xmr.load_encoder({"type": "fused", "text": text, "image": {"model": tiny_clip}})


@pytest.fixture(scope="module")
def dense_model(tiny_model, tmp_path_factory) -> str:
    """The tiny BERT with a Dense layer and Normalize after a pooling that leaves the prompt out (instructor-style)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    base = SentenceTransformer(tiny_model, device="cpu")
    torch.manual_seed(1)
    modules = [base[0], Pooling(32, include_prompt=False), Dense(32, 8, activation_function=torch.nn.Tanh()),
               Normalize()]
    folder = tmp_path_factory.mktemp("dense-model") / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return str(folder)


@pytest.fixture
def dense_fused(dense_model, tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    text = {"type": "sentence-transformers", "model": dense_model, "query_prompt": "music teach ",
            "label_prompt": "data "}
    return xmr.load_encoder({"type": "fused", "text": text, "image": {"model": tiny_clip}, "max_images": 2})


def training_vectors(encoder, items, side):
    """``embed`` (the training path) in eval mode without gradients, as numpy."""
    encoder.train_mode(False)
    with torch.no_grad():
        return encoder.embed(items, side).cpu().numpy()


def test_items_without_images_equal_the_text_encoder(fused):
    np.testing.assert_allclose(fused.encode_labels(TEXTS), fused.text_encoder.encode_labels(TEXTS), atol=1e-5)
    np.testing.assert_allclose(fused.encode_queries(TEXTS), fused.text_encoder.encode_queries(TEXTS), atol=1e-5)


def test_text_only_items_go_through_the_whole_sentence_transformers_stack(dense_fused):
    """Dense + Normalize after pooling and a prompt left out of pooling all apply, as in the text encoder."""
    text_encoder = dense_fused.text_encoder
    assert dense_fused.dim == text_encoder.dim == 8
    for side, encode in (("query", text_encoder.encode_queries), ("label", text_encoder.encode_labels)):
        expected = encode(TEXTS)
        np.testing.assert_allclose(dense_fused.encode(TEXTS, side).values, expected, atol=1e-5)
        np.testing.assert_allclose(training_vectors(dense_fused, TEXTS, side), expected, atol=1e-5)


def test_training_path_equals_inference_path_with_images(fused, images):
    items = [{"text": "python sql", "image": images[0]}, "cook food", {"image": images[1]},
             {"text": "music teach children", "images": images[1:]}]
    for side in ("query", "label"):
        np.testing.assert_allclose(training_vectors(fused, items, side), fused.encode(items, side).values,
                                   atol=1e-5)


def test_training_path_equals_inference_path_with_dense_layer_and_mixed_image_counts(dense_fused, images):
    items = [{"text": "python sql", "images": images[:2]}, "cook food", {"image": images[2]},
             {"text": "music", "image": images[0]}]
    encoded = dense_fused.encode_queries(items)
    np.testing.assert_allclose(training_vectors(dense_fused, items, "query"), encoded, atol=1e-5)
    alone = np.vstack([dense_fused.encode_queries([item]) for item in items])  # batches mix slot counts
    np.testing.assert_allclose(encoded, alone, atol=1e-5)
    assert not np.allclose(encoded[0], dense_fused.text_encoder.encode_queries(["python sql"])[0])


def test_a_model_pooling_the_first_token_refuses_image_tokens(tiny_model, tiny_clip, images, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    base = SentenceTransformer(tiny_model, device="cpu")
    SentenceTransformer(modules=[base[0], Pooling(32, "cls")], device="cpu").save(str(tmp_path / "cls"))
    encoder = xmr.load_encoder({"type": "fused", "text": str(tmp_path / "cls"), "image": {"model": tiny_clip}})
    np.testing.assert_allclose(encoder.encode_labels(TEXTS), encoder.text_encoder.encode_labels(TEXTS), atol=1e-5)
    with pytest.raises(EncoderError, match="pools the first token"):
        encoder.encode_labels([{"text": "python", "image": images[0]}])


def test_a_masked_image_equals_text_only_and_a_missing_one_is_named(fused, tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(EncoderError, match="nope.jpg"):
        fused.encode_queries([{"text": "python sql", "image": missing}])
    fused.skip_missing_images = True
    np.testing.assert_allclose(fused.encode_queries([{"text": "python sql", "image": missing}]),
                               fused.text_encoder.encode_queries(["python sql"]), atol=1e-5)
    with pytest.raises(EncoderError, match="item 1 is image-only and none of its images could be read"):
        fused.encode_queries(["python", {"image": missing}])


def test_the_image_changes_the_embedding(fused, images):
    red, green, red_again = fused.encode_labels([{"text": "python sql", "image": images[0]},
                                                 {"text": "python sql", "image": images[1]},
                                                 {"text": "python sql", "images": [images[0]]}])
    assert not np.allclose(red, green, atol=1e-4)
    np.testing.assert_allclose(red, red_again, atol=1e-6)  # "image" and "images" name the same slot
    assert not np.allclose(red, fused.text_encoder.encode_labels(["python sql"])[0], atol=1e-4)


def test_zero_projection_makes_the_image_content_irrelevant(fused, images):
    with torch.no_grad():
        fused.projection.weight.zero_()
        fused.projection.bias.zero_()
    red, green = fused.encode_labels([{"text": "python", "image": images[0]}, {"text": "python", "image": images[1]}])
    np.testing.assert_allclose(red, green, atol=1e-6)


def test_image_only_queries_and_several_images(fused, images):
    vectors = fused.encode_queries([{"image": images[2]}, {"text": "music", "images": images[:2]}])
    assert vectors.shape == (2, fused.dim) and np.isfinite(vectors).all()
    fused.max_images = 2
    two = fused.encode_queries([{"text": "music", "images": images[:2]}])
    assert not np.allclose(two, vectors[1:], atol=1e-4)  # the second image now takes a slot too
    with pytest.raises(EncoderError, match="neither text nor an image"):
        fused.encode_queries([{}])


def test_training_groups_hold_the_text_encoder_and_both_projections(tiny_decoder, tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    encoder = xmr.load_encoder({"type": "fused", "image": {"model": tiny_clip},
                                "text": {"type": "decoder-llm", "model": tiny_decoder, "projection_dim": 8}})
    groups = {name: {id(parameter) for parameter in parameters} for name, parameters in
              encoder.parameter_groups().items()}
    assert set(groups) == {"encoder", "projection"}
    wanted = {id(parameter) for parameter in [*encoder.projection.parameters(),
                                              *encoder.text_encoder.projection.parameters()]}
    assert groups["projection"] == wanted


# ---- the image cache: content-addressed, append-only, shared by processes -------------------------------------
def tower(tiny_clip, cache_dir, monkeypatch=None) -> ImageTower:
    """A fresh tower over ``cache_dir``, as another process would build it; with ``monkeypatch`` it must not run."""
    fresh = ImageTower(model=tiny_clip, cache_dir=str(cache_dir))
    if monkeypatch is not None:
        def must_not_run(paths):
            raise AssertionError(f"the tower ran on {paths} although every image is cached")

        monkeypatch.setattr(fresh, "_run", must_not_run)
    return fresh


def test_image_embeddings_are_cached_by_content_under_the_cache_root(fused, images, tmp_path, monkeypatch):
    first = fused.tower.embed(images)[0]
    assert fused.tower.cache.folder.parent == tmp_path / "cache" / "image-embeddings"  # $XMR_CACHE
    np.testing.assert_array_equal(tower(fused.tower.model_name, tmp_path / "cache", monkeypatch).embed(images)[0],
                                  first)


def test_towers_in_several_processes_all_keep_their_entries(tiny_clip, images, tmp_path, monkeypatch):
    expected = tower(tiny_clip, tmp_path / "reference").embed(images)[0]
    one, two = tower(tiny_clip, tmp_path), tower(tiny_clip, tmp_path)
    two.embed([images[2]])  # two has read the cache before one writes
    one.embed([images[0]])
    two.embed([images[1]])  # a rewrite of two's view would drop one's entry
    third = tower(tiny_clip, tmp_path, monkeypatch)
    np.testing.assert_allclose(third.embed(images)[0], expected, atol=1e-6)


def test_a_checkpoint_retrained_in_place_is_not_answered_from_the_cache(tiny_clip, images, tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "tower.safetensors"
    for seed in (0, 1):  # the same path, other weights: as a user retraining the tower would leave it
        weights = ImageTower(model=tiny_clip, seed=seed, cache_dir=str(tmp_path / "scratch")).clip.state_dict()
        save_file({name: value.contiguous() for name, value in weights.items()}, checkpoint)
        vectors = ImageTower(model=tiny_clip, pretrained=str(checkpoint), cache_dir=str(tmp_path)).embed(images)[0]
        direct = ImageTower(model=tiny_clip, seed=seed, cache_dir=str(tmp_path / f"direct-{seed}")).embed(images)[0]
        np.testing.assert_allclose(vectors, direct, atol=1e-5)  # the weights now at the path, not cached ones


def test_a_call_adds_a_part_with_its_new_entries_only(tiny_clip, images, tmp_path):
    cache_tower = tower(tiny_clip, tmp_path)
    cache_tower.embed(images[:2])
    [first] = cache_tower.cache.parts()
    before = (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes())
    cache_tower.embed(images)  # one new image
    cache_tower.embed(images)  # nothing new: nothing written
    parts = cache_tower.cache.parts()
    assert len(parts) == 2 and parts[0] == first
    assert (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes()) == before
    assert pq.read_table(parts[1]).num_rows == 1
    assert not [path.name for path in parts[0].parent.iterdir() if path.name.startswith(".")]  # no temp files


def test_compaction_merges_parts_and_keeps_those_written_meanwhile(tiny_clip, images, tmp_path, monkeypatch):
    writer, other = tower(tiny_clip, tmp_path), tower(tiny_clip, tmp_path)
    writer.cache.compact_after = 2
    writer.embed([images[0]])
    writer.embed([images[1]])
    assert len(writer.cache.parts()) == 2
    read_part = writer.cache._read_part
    calls = []

    def read_while_another_process_writes(path):
        if not calls:
            other.embed([images[2]])  # a part appears while the compaction reads
        calls.append(path)
        return read_part(path)

    monkeypatch.setattr(writer.cache, "_read_part", read_while_another_process_writes)
    writer.cache.compact()
    parts = writer.cache.parts()
    assert len(parts) == 2 and sum(pq.read_table(path).num_rows for path in parts) == 3  # merged + the new one
    third = tower(tiny_clip, tmp_path, monkeypatch)
    assert third.embed(images)[1].all()
    assert len(third.cache.load()) == 3


# ---- persistence and search ---------------------------------------------------------------------------------
def test_saved_fused_encoder_reloads_identically(fused, images, tmp_path):
    with torch.no_grad():
        fused.projection.weight.mul_(3.0)  # stand-in for a trained projection
    items = [{"text": "python sql", "image": images[0]}, "cook food"]
    expected = fused.encode_labels(items)
    loaded = xmr.load_encoder(str(fused.save(tmp_path / "fused-encoder")))
    np.testing.assert_allclose(loaded.encode_labels(items), expected, atol=1e-5)


def test_fused_index_searches_with_images(fused, images, tmp_path):
    catalogue = xmr.LabelCatalogue.from_records([
        {"id": "red", "text": "python sql", "image": images[0]},
        {"id": "green", "text": "python sql", "image": images[1]},
        {"id": "plain", "text": "cook food kitchen"},
    ])
    xmr.build_index(catalogue, fused, tmp_path / "ix")
    index = xmr.load_index(tmp_path / "ix")
    assert index.catalogue.images[0] == [images[0]]
    result = index.search([{"text": "python sql", "image": images[1]}, {"image": images[0]}], k=3)
    assert result.label_ids(0)[0] == "green" and len(result.label_ids(1)) == 3


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/coco-mini")
def test_coco_mini_real_photos_find_their_own_entry_against_a_shuffled_control(tiny_model, tiny_clip, tmp_path,
                                                                                 monkeypatch):
    """A half-size, re-encoded copy of each COCO test photo (other bytes: the tower runs, no cache hit) finds the
    entry showing the original at rank 1; the same copies shuffled across queries do not."""
    from PIL import Image

    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    encoder = xmr.load_encoder({"type": "fused", "text": {"type": "sentence-transformers", "model": tiny_model},
                                "image": {"model": tiny_clip}})
    records = [json.loads(line) for line in (SHARED / "test.jsonl").read_text().splitlines()]
    originals = [str(SHARED / record["image"]) for record in records]
    copies = []
    for number, original in enumerate(originals):
        with Image.open(original) as photo:
            copy = photo.convert("RGB").resize((photo.width // 2, photo.height // 2))
        copies.append(str(tmp_path / f"copy{number}.jpg"))
        copy.save(copies[-1], quality=70)
    entries = encoder.encode_labels([{"image": path} for path in originals])

    def own_entry_at_rank_1(queries: list[str]) -> float:
        scores = encoder.encode_queries([{"image": path} for path in queries]) @ entries.T
        return float(np.mean(scores.argmax(axis=1) == np.arange(len(queries))))

    assert len(records) == 79
    assert own_entry_at_rank_1(copies) >= 0.9
    assert own_entry_at_rank_1(copies[1:] + copies[:1]) <= 0.1


def test_cli_queries_with_images(fused, images, tmp_path, capsys):
    from xmr.cli import main

    catalogue = tmp_path / "labels.jsonl"
    catalogue.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "red", "text": "python sql", "image": images[0]}, {"id": "plain", "text": "cook food"}]))
    encoder_file = tmp_path / "encoder.json"
    encoder_file.write_text(json.dumps(fused.config()))
    out = str(tmp_path / "ix")
    image_root = str(Path(images[0]).parent)  # the images live outside the catalogue's folder: allow them
    assert main(["build", "--labels", str(catalogue), "--encoder", str(encoder_file), "--out", out]) == 2
    assert "resolves outside" in capsys.readouterr().err
    assert main(["build", "--labels", str(catalogue), "--encoder", str(encoder_file), "--out", out,
                 "--image-root", image_root]) == 0
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"text": "python", "image": images[1]}) + "\n"
                       + json.dumps({"image": images[0]}) + "\n")
    capsys.readouterr()
    assert main(["query", str(tmp_path / "ix"), "--file", str(queries), "--json", "-k", "1",
                 "--image-root", image_root]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[1]["query"] == {"text": "", "images": [images[0]]}
    assert main(["query", str(tmp_path / "ix"), "python", "--image", images[0], "-k", "2"]) == 0
    assert "[image " in capsys.readouterr().out
