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


def tiny_llama(folder: Path, architecture: str = "llama") -> Path:
    """A 2-layer, 32-d random causal LM (Llama or Qwen2) with a word-level tokenizer, saved like any HF checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {token: number for number, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS, ":", "this"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                 "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[architecture]
    config = config_class(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory) -> str:
    return str(tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> str:
    return str(tiny_llama(tmp_path_factory.mktemp("tiny-qwen2"), architecture="qwen2"))


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Register a tiny open_clip architecture 'xmr-tiny-clip' (random weights; no pretrained CLIP offline)."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("clip-config")
    (folder / "xmr-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    return "xmr-tiny-clip"


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> list[str]:
    """Three small distinct JPEGs: red, green, a gradient."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    gradient = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (48, 1))
    arrays = [np.full((48, 48, 3), (220, 20, 20), np.uint8), np.full((48, 48, 3), (20, 200, 40), np.uint8),
              np.stack([gradient, gradient.T, 255 - gradient], axis=-1)]
    paths = []
    for number, array in enumerate(arrays):
        path = folder / f"image{number}.jpg"
        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


def synthetic_task(folder: Path, n_labels: int = 24, n_train: int = 240, n_test: int = 60, seed: int = 0) -> Path:
    """A retrieval task a model must LEARN: label texts and query texts share no words.

    Label i is named by two words from the first half of WORDS; its queries carry two other "signature" words from
    the second half (plus a noise word); a query has one or two labels. Writes labels/train/validation/test.jsonl.
    """
    import itertools
    import random

    rng = random.Random(seed)
    half = len(WORDS) // 2
    names = rng.sample(list(itertools.combinations(WORDS[:half], 2)), n_labels)
    signatures = rng.sample(list(itertools.combinations(WORDS[half:], 2)), n_labels)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.jsonl").write_text("".join(
        json.dumps({"id": label, "text": " ".join(name)}) + "\n" for label, name in enumerate(names)))

    def instances(count: int, offset: int) -> str:
        lines = []
        for number in range(count):
            labels = rng.sample(range(n_labels), rng.choice([1, 1, 2]))
            words = [word for label in labels for word in signatures[label]] + [rng.choice(WORDS[:half])]
            rng.shuffle(words)
            lines.append(json.dumps({"id": offset + number, "text": " ".join(words), "labels": labels}) + "\n")
        return "".join(lines)

    (folder / "train.jsonl").write_text(instances(n_train, 0))
    (folder / "validation.jsonl").write_text(instances(n_test // 2, n_train))
    (folder / "test.jsonl").write_text(instances(n_test, 2 * n_train))
    return folder
