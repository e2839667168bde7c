import json

import numpy as np
import pytest
import torch

import xmr
from xmr.encoders.bundled import DEFAULT_TEXT_MODEL, canonical_model_name
from xmr.errors import EncoderError


def test_encoder_shapes_dtype_and_normalisation(tiny_encoder):
    vectors = tiny_encoder.encode_labels(["python sql", "cook food", {"text": "drive truck"}])
    assert vectors.shape == (3, tiny_encoder.dim) == (3, 32)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert tiny_encoder.encode_queries([]).shape == (0, 32)


def test_config_round_trip_gives_identical_vectors(tiny_encoder, tmp_path):
    config = tiny_encoder.config()
    assert json.loads(json.dumps(config)) == config  # JSON-serialisable
    again = xmr.load_encoder(config)
    texts = ["manage music staff", "repair hydraulic machine"]
    np.testing.assert_array_equal(again.encode_queries(texts), tiny_encoder.encode_queries(texts))
    assert again.identity() == tiny_encoder.identity()
    path = tmp_path / "encoder.json"
    path.write_text(json.dumps(config))
    assert xmr.load_encoder(str(path)).identity() == tiny_encoder.identity()


def test_prompts_apply_to_their_side(tiny_model):
    plain = xmr.load_encoder(tiny_model)
    prompted = xmr.load_encoder(tiny_model, query_prompt="python ", label_prompt="")
    text = ["cook food kitchen"]
    assert not np.allclose(prompted.encode_queries(text), plain.encode_queries(text))
    np.testing.assert_allclose(prompted.encode_labels(text), plain.encode_labels(text), rtol=1e-6)
    assert prompted.identity() != plain.identity()


def test_training_embed_equals_encode_with_a_prompt_left_out_of_pooling(tiny_model):
    """Instructor-style pooling (``include_prompt=False``) must see the prompt the same way in training and encoding."""
    encoder = xmr.load_encoder(tiny_model, query_prompt="music teach ", label_prompt="data ")
    included = encoder.encode_queries(["cook food kitchen", "python"])
    encoder.model.set_pooling_include_prompt(False)
    encoder.train_mode(False)
    texts = ["cook food kitchen", "python", "drive forklift truck operate"]
    for side, encode in (("query", encoder.encode_queries), ("label", encoder.encode_labels)):
        with torch.no_grad():
            trained = encoder.embed(texts, side).numpy()
        np.testing.assert_allclose(trained, encode(texts), atol=1e-5)
    assert not np.allclose(encoder.encode_queries(["cook food kitchen", "python"]), included, atol=1e-4)


def test_unnormalised_encoder_keeps_norms(tiny_model, tiny_encoder):
    encoder = xmr.load_encoder(tiny_model, normalize=False)
    texts = ["python sql java", "cook"]
    vectors = encoder.encode_labels(texts)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    assert not np.allclose(norms, 1.0)
    np.testing.assert_allclose(vectors / norms, tiny_encoder.encode_labels(texts), atol=1e-6)  # same directions


def test_text_encoder_refuses_image_only_items(tiny_encoder):
    with pytest.raises(EncoderError, match="item 1 has an image but no text"):
        tiny_encoder.encode_queries(["python", {"image": "a.jpg"}])
    with pytest.raises(EncoderError, match="not a single string"):
        tiny_encoder.encode_queries("python")


def test_bad_configs_are_refused(tiny_model, tmp_path):
    with pytest.raises(EncoderError, match="unknown encoder type 'nope'"):
        xmr.load_encoder({"type": "nope"})
    with pytest.raises(EncoderError, match="invalid"):
        xmr.load_encoder({"type": "sentence-transformers", "model": tiny_model, "colour": "red"})
    with pytest.raises(EncoderError, match="gives 32-d vectors, config says 64"):
        xmr.load_encoder({"type": "sentence-transformers", "model": tiny_model, "dim": 64})
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(EncoderError, match="bad.json: bad JSON"):
        xmr.load_encoder(str(bad))


def test_model_names_are_canonical(tiny_model):
    assert canonical_model_name("all-MiniLM-L6-v2") == DEFAULT_TEXT_MODEL
    assert canonical_model_name("org/some-model") == "org/some-model"
    assert canonical_model_name(tiny_model) == tiny_model  # already absolute


@pytest.mark.slow
def test_bundled_minilm_loads_offline_and_embeds_as_published():
    encoder = xmr.load_encoder("all-MiniLM-L6-v2", device="cpu")
    assert encoder.config()["model"] == DEFAULT_TEXT_MODEL and encoder.dim == 384
    vector = encoder.encode_queries(["hello world"])[0]
    np.testing.assert_allclose(vector[:3], [-0.0345, 0.0310, 0.0067], atol=5e-4)
    labels = ["operate forklift", "Python (computer programming)", "prepare financial statements"]
    index = xmr.build_index(xmr.LabelCatalogue.from_records(
        [{"id": i, "text": t} for i, t in enumerate(labels)]), encoder, None)
    result = index.search(["forklift driving", "experience with python", "reconcile the monthly accounts"], k=1)
    assert result.ids[:, 0].tolist() == [0, 1, 2]
