"""Shared fixtures: offline mode, a tiny random sentence-transformers model, and small catalogues."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

WORDS = (
    "python sql java data database engineer forklift drive truck operate manage staff music teach children "
    "cook food kitchen account finance budget report customer service sales repair machine hydraulic system "
    "write code test software cloud network security design graphic paint wall build house plan project team"
).split()


def tiny_sentence_transformer(folder: Path) -> Path:
    """A 2-layer, 32-d random BERT saved as a sentence-transformers folder (mean pooling), built offline."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf_folder = folder / "hf"
    hf_folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: number for number, token in enumerate(vocab)})
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(hf_folder)
    tokenizer.save_pretrained(hf_folder)
    st_folder = folder / "st"
    SentenceTransformer(str(hf_folder), device="cpu").save(str(st_folder))
    return st_folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model):
    import xmr

    return xmr.load_encoder(tiny_model, device="cpu")


def label_records(count: int = 300, seed: int = 0) -> list[dict]:
    """Distinct pseudo-random multi-word labels over WORDS."""
    import random

    rng = random.Random(seed)
    seen, records = set(), []
    while len(records) < count:
        text = " ".join(rng.sample(WORDS, rng.randint(2, 5)))
        if text not in seen:
            seen.add(text)
            records.append({"id": len(records), "text": text, "group": len(records) % 7})
    return records


@pytest.fixture
def labels_file(tmp_path) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in label_records()))
    return path
