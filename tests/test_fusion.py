"""ViXML early fusion: image tower, projection into the text encoder's input, fallbacks, persistence."""

from pathlib import Path

import numpy as np
import pytest
import torch

import xmr
from xmr.errors import EncoderError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


@pytest.fixture(params=["sentence-transformers", "decoder-llm"])
def fused(request, tiny_model, tiny_decoder, tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    text = {"type": request.param, "model": tiny_model if request.param == "sentence-transformers" else tiny_decoder}
    return xmr.load_encoder({"type": "fused", "text": text, "image": {"model": tiny_clip}})


def test_items_without_images_equal_the_text_encoder(fused, images):
    texts = ["python sql", "cook food kitchen"]
    np.testing.assert_array_equal(fused.encode_labels(texts), fused.text_encoder.encode_labels(texts))


def test_a_masked_image_equals_text_only_and_a_missing_one_is_named(fused, tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(EncoderError, match="nope.jpg"):
        fused.encode_queries([{"text": "python sql", "image": missing}])
    fused.skip_missing_images = True
    np.testing.assert_allclose(fused.encode_queries([{"text": "python sql", "image": missing}]),
                               fused.text_encoder.encode_queries(["python sql"]), atol=1e-6)


def test_the_image_changes_the_embedding(fused, images):
    red, green, red_again = fused.encode_labels([{"text": "python sql", "image": images[0]},
                                                 {"text": "python sql", "image": images[1]},
                                                 {"text": "python sql", "images": [images[0]]}])
    assert not np.allclose(red, green)
    np.testing.assert_allclose(red, red_again, atol=1e-6)
    assert not np.allclose(red, fused.text_encoder.encode_labels(["python sql"])[0])
    # the fused path reproduces the text encoder when the same sequence is fed without image slots
    text_path = fused._embed_fused([fused._sequence("python sql", 0, "label")], [np.zeros((0, fused.tower.dim))])
    np.testing.assert_allclose(text_path[0], fused.text_encoder.encode_labels(["python sql"])[0], atol=1e-5)


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
    assert not np.allclose(two, vectors[1:])  # the second image now takes a slot too
    with pytest.raises(EncoderError, match="neither text nor an image"):
        fused.encode_queries([{}])


def test_image_embeddings_are_cached_by_content(fused, images, monkeypatch):
    first = fused.tower.embed(images)[0]
    assert fused.tower.cache_path.is_file()
    fresh = type(fused.tower)(**fused.tower.config(), cache_dir=str(fused.tower.cache_path.parents[1]))

    def must_not_run(paths):
        raise AssertionError("the tower ran although every image is cached")

    monkeypatch.setattr(fresh, "_run", must_not_run)
    np.testing.assert_array_equal(fresh.embed(images)[0], first)


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
def test_coco_mini_real_images_end_to_end(tiny_model, tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path / "cache"))
    encoder = xmr.load_encoder({"type": "fused", "text": {"type": "sentence-transformers", "model": tiny_model},
                                "image": {"model": tiny_clip}})
    index = xmr.build_index(SHARED / "labels.jsonl", encoder, None)
    for modality in ("image", "all"):
        result = xmr.evaluate(index, SHARED / "test.jsonl", ks=(1, 5), modality=modality)
        assert result["queries"] == 79 and result["modality"] == modality
        assert 0.0 <= result["metrics"]["P@5"] <= 1.0


def test_cli_queries_with_images(fused, images, tmp_path, capsys):
    import json

    from xmr.cli import main

    catalogue = tmp_path / "labels.jsonl"
    catalogue.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "red", "text": "python sql", "image": images[0]}, {"id": "plain", "text": "cook food"}]))
    encoder_file = tmp_path / "encoder.json"
    encoder_file.write_text(json.dumps(fused.config()))
    out = str(tmp_path / "ix")
    assert main(["build", "--labels", str(catalogue), "--encoder", str(encoder_file), "--out", out]) == 0
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"text": "python", "image": images[1]}) + "\n"
                       + json.dumps({"image": images[0]}) + "\n")
    capsys.readouterr()
    assert main(["query", str(tmp_path / "ix"), "--file", str(queries), "--json", "-k", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[1]["query"] == {"text": "", "images": [images[0]]}
    assert main(["query", str(tmp_path / "ix"), "python", "--image", images[0], "-k", "2"]) == 0
    assert "[image " in capsys.readouterr().out
