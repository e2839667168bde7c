import json
from pathlib import Path

import numpy as np
import pytest
import torch

import xmr
from xmr.encoders import decoder as decoder_module
from xmr.encoders.fusable import IMAGE_SLOT
from xmr.encoders.pooling import last_token_pool, mean_pool, pool
from xmr.errors import EncoderError

TEXTS = ["python sql engineer", "cook", "drive forklift truck operate machine", "music teach children"]


def test_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[100.0], [2.0], [4.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert mean_pool(hidden, mask).squeeze(-1).tolist() == [2.0, 3.0]
    assert last_token_pool(hidden, mask).squeeze(-1).tolist() == [3.0, 4.0]
    with pytest.raises(EncoderError, match="unknown pooling 'max'"):  # the CLI prints one line for EncoderError
        pool(hidden, mask, "max")


@pytest.mark.parametrize("architecture", ["tiny_decoder", "tiny_qwen"])
@pytest.mark.parametrize("pooling", ["mean", "last_token"])
def test_left_and_right_padding_give_identical_vectors(request, architecture, pooling):
    model = request.getfixturevalue(architecture)
    right = xmr.load_encoder({"type": "decoder-llm", "model": model, "pooling": pooling,
                              "padding_side": "right", "batch_size": 4})
    left = xmr.load_encoder({"type": "decoder-llm", "model": model, "pooling": pooling,
                             "padding_side": "left", "batch_size": 4})
    np.testing.assert_allclose(right.encode_labels(TEXTS), left.encode_labels(TEXTS), atol=1e-5)
    # and a padded batch equals encoding each text alone
    alone = np.vstack([right.encode_labels([text]) for text in TEXTS])
    np.testing.assert_allclose(right.encode_labels(TEXTS), alone, atol=1e-5)


def test_templates_eos_truncation_and_pooling_choice(tiny_decoder):
    encoder = xmr.load_encoder({"type": "decoder-llm", "model": tiny_decoder, "max_length": 4,
                                "query_template": "this : {text}"})
    ids = encoder.token_ids(["python sql engineer cook food"], encoder.query_template)[0]
    assert len(ids) == 4 and ids[-1] == encoder.tokenizer.eos_token_id  # truncated, EOS kept
    queries, labels = encoder.encode_queries(TEXTS), encoder.encode_labels(TEXTS)
    assert not np.allclose(queries, labels)  # the query template applies to queries only
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    last = xmr.load_encoder({"type": "decoder-llm", "model": tiny_decoder, "pooling": "last_token"})
    assert not np.allclose(last.encode_labels(TEXTS), xmr.load_encoder(
        {"type": "decoder-llm", "model": tiny_decoder}).encode_labels(TEXTS))
    with pytest.raises(EncoderError, match="must contain"):
        xmr.load_encoder({"type": "decoder-llm", "model": tiny_decoder, "query_template": "no slot"})
    with pytest.raises(EncoderError, match="unknown pooling"):
        xmr.load_encoder({"type": "decoder-llm", "model": tiny_decoder, "pooling": "max"})


def test_keep_template_tail_truncates_only_the_text(tiny_decoder, tmp_path):
    template = "this : {text} means in one word"
    long_text = " ".join(["python sql engineer cook food"] * 8)
    config = {"type": "decoder-llm", "model": tiny_decoder, "max_length": 12, "query_template": template}
    cut, kept = xmr.load_encoder(config), xmr.load_encoder({**config, "keep_template_tail": True})
    tail = kept.tokenizer(" means in one word", add_special_tokens=False)["input_ids"]
    eos = kept.tokenizer.eos_token_id
    whole, inside = cut.token_ids([long_text], template)[0], kept.token_ids([long_text], template)[0]
    assert len(whole) == len(inside) == 12
    assert inside[-len(tail) - 1:] == tail + [eos]  # the template's ending and the EOS survive
    assert whole[-len(tail) - 1:-1] != tail  # whole-prompt truncation cut them off
    assert not np.allclose(cut.encode_queries([long_text]), kept.encode_queries([long_text]))
    # image slots sit between the text and the template's tail, and add to the text's room instead of taking it
    fused = kept.fusion_tokens(long_text, "query", 2, " and its image:").ids
    assert fused[-len(tail) - 3:] == [IMAGE_SLOT, IMAGE_SLOT] + tail + [eos]
    assert fused[:len(inside) - len(tail) - 1] == inside[:-len(tail) - 1]
    # the key is written only when on: configs (and indexes) from before it keep their identity and vectors
    assert "keep_template_tail" not in cut.config() and kept.config()["keep_template_tail"] is True
    again = xmr.load_encoder(json.loads(json.dumps(kept.config())))
    np.testing.assert_array_equal(again.encode_queries([long_text]), kept.encode_queries([long_text]))
    with pytest.raises(EncoderError, match="no room for text"):
        xmr.load_encoder({**config, "keep_template_tail": True, "max_length": len(tail) + 1}).encode_queries(["a"])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_training_embed_equals_encode(tiny_decoder, padding_side):
    encoder = xmr.load_encoder({"type": "decoder-llm", "model": tiny_decoder, "projection_dim": 8,
                                "query_template": "this : {text}", "padding_side": padding_side})
    encoder.train_mode(False)
    for side, encode in (("query", encoder.encode_queries), ("label", encoder.encode_labels)):
        with torch.no_grad():
            trained = encoder.embed(TEXTS, side).numpy()
        np.testing.assert_allclose(trained, encode(TEXTS), atol=1e-5)


def test_bundled_model_copies_live_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("XMR_CACHE", str(tmp_path))
    made = tmp_path / "models" / "smollm2-135m"
    made.mkdir(parents=True)
    (made / "config.json").write_text("{}")  # a copy made earlier (by this or another process): reused as is
    assert decoder_module._dequantised_copy("smollm2-135m") == made


def test_config_round_trip_and_index(tiny_decoder, tmp_path):
    encoder = xmr.load_encoder({"type": "decoder-llm", "model": tiny_decoder, "projection_dim": 16})
    assert encoder.dim == 16
    again = xmr.load_encoder(json.loads(json.dumps(encoder.config())))
    np.testing.assert_array_equal(again.encode_queries(TEXTS), encoder.encode_queries(TEXTS))
    catalogue = xmr.LabelCatalogue.from_records([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    xmr.build_index(catalogue, encoder, tmp_path / "ix")
    index = xmr.load_index(tmp_path / "ix")
    assert index.search([TEXTS[2]], k=1).label_ids(0) == [2]


def test_encoder_folder_with_lora_adapter_and_projection(tiny_decoder, tmp_path):
    from peft import LoraConfig, get_peft_model

    encoder = xmr.load_encoder({"type": "decoder-llm", "model": tiny_decoder, "projection_dim": 8})
    before = encoder.encode_labels(TEXTS)
    lora = LoraConfig(r=4, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    encoder.backbone = get_peft_model(encoder.backbone, lora)
    with torch.no_grad():  # stand-in for training: move the adapter and the projection away from their init
        for name, parameter in encoder.backbone.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
        encoder.projection.weight.mul_(-1.0)
    trained = encoder.encode_labels(TEXTS)
    assert not np.allclose(before, trained)
    folder = encoder.save(tmp_path / "encoder")
    assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "projection.safetensors").is_file()
    loaded = xmr.load_encoder(str(folder))
    np.testing.assert_allclose(loaded.encode_labels(TEXTS), trained, atol=1e-5)


@pytest.mark.slow
def test_bundled_smollm2_loads_offline_and_ranks_sensibly():
    encoder = xmr.load_encoder("smollm2-135m")
    assert encoder.dim == 576 and encoder.config()["model"] == "smollm2-135m"
    labels = encoder.encode_labels(["operate forklift", "Python (computer programming)"])
    queries = encoder.encode_queries(["forklift driving", "experience with python"])
    assert (queries @ labels.T).argmax(axis=1).tolist() == [0, 1]


COOKING = Path(__file__).resolve().parents[2] / "shared" / "data" / "cooking_stackexchange"


@pytest.mark.slow
@pytest.mark.skipif(not COOKING.is_dir(), reason="needs ../shared/data/cooking_stackexchange")
def test_the_bundled_decoder_name_resolves_to_the_configuration_that_ranks_best_zero_shot(tmp_path):
    """The bare name uses the measured zero-shot configuration (eval/bench/decoder-zero-shot); an explicit config
    keeps DecoderEncoder's training defaults (mean pooling). On real tagging data the bare name ranks far better."""
    from xmr.datasets import read_instances
    from xmr.evaluation import evaluate

    catalogue = xmr.LabelCatalogue.from_file(COOKING / "labels.jsonl").take(list(range(120)))
    instances = read_instances(COOKING / "test.jsonl")
    rows = [row for row, labels in enumerate(instances.labels)
            if labels and all(label in catalogue for label in labels)]
    instances = instances.subset(rows[:40], "40 queries whose labels are among the first 120")
    recall = {}
    for name, spec in (("bare", "smollm2-135m"), ("plain", {"type": "decoder-llm", "model": "smollm2-135m"})):
        index = xmr.build_index(catalogue, xmr.load_encoder(spec), tmp_path / name)
        recall[name] = evaluate(index, instances, ks=[1, 10])["metrics"]["R@10"]
    assert xmr.encoders.encoder_config("smollm2-135m")["pooling"] == "last_token"
    assert recall["bare"] > recall["plain"] + 0.1, recall
