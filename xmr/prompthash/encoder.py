"""Encoder ``prompthash``: towers + :class:`~xmr.prompthash.model.HashNet`, emitting ``bits``-bit
:class:`~xmr.prompthash.codes.HashCodes` (the sign of the tanh head's output, as the reference's ``get_code``)
with the towers' unit vectors beside them for the optional float re-rank.

Slots: with open_clip towers an item's image goes through the image slot and its text through the text slot,
whatever the side, so one index answers search by image, by text, or by both (an item with both is the fused pair,
hashed as ``sign(h_image + h_text)``, the paper's unified code ``B = sign(F + G)``; its float vector is the
normalised sum of the two tower vectors). With text towers (text-only hashing) queries take the image slot and
labels the text slot. An encoder folder holds ``xmr_encoder.json`` and ``prompthash.safetensors`` (the hash net,
the prompt context and the towers' trained blocks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xmr.encoders import register_encoder
from xmr.encoders.base import Encoder, Item, check_side, write_encoder_config
from xmr.errors import EncoderError
from xmr.prompthash.codes import HashCodes
from xmr.prompthash.model import HashNet, HashNetConfig
from xmr.prompthash.towers import ClipTowers, TextTowers, build_towers

WEIGHTS_FILE = "prompthash.safetensors"


def item_parts(item: Item) -> tuple[str | None, str | None]:
    """``(image path, text)`` of an item (the first image when it has several)."""
    if isinstance(item, str):
        return None, item
    if not isinstance(item, Mapping):
        raise EncoderError(f"cannot encode {type(item).__name__}: an item is a text or a mapping with text/images")
    images = item.get("images") or ([item["image"]] if item.get("image") else [])
    text = item.get("text")
    return (str(images[0]) if images else None), (text if isinstance(text, str) and text.strip() else None)


@register_encoder("prompthash")
class PromptHashEncoder(Encoder):
    """Binary codes of one code length from trained (or untrained) PromptHash weights."""

    representation = HashCodes.kind
    runtime_keys = frozenset({"batch_size", "device"})

    def __init__(self, towers: dict[str, Any], net: dict[str, Any], bits: int, model: str | None = None,
                 floats: bool = True, batch_size: int = 64, device: str | None = None, seed: int = 0) -> None:
        self.towers_settings, self.net_settings = dict(towers), dict(net)
        self.bits, self.weights, self.floats, self.batch_size, self.seed = int(bits), model, bool(floats), \
            int(batch_size), int(seed)
        if device not in (None, "cpu"):
            raise EncoderError(f"prompthash encodes on the CPU (the hash net is small); device {device!r} is not "
                               "supported")
        self.towers = build_towers(self.towers_settings)
        config = HashNetConfig(**{**self.net_settings, "features": self.towers.features})
        if self.bits not in config.bits:
            raise EncoderError(f"prompthash encoder: bits {self.bits} is not one of the net's code lengths "
                               f"{config.bits}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # an untrained net is the same random network on every load
            self.net = HashNet(config)
        if model is not None:
            self.load_weights(Path(model))
        self.train_mode(False)

    # ---- the Encoder interface ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.bits

    def representation_spec(self) -> dict[str, Any]:
        return {"kind": self.representation, "metric": self.metric, "bits": self.bits}

    def config(self) -> dict[str, Any]:
        return {"type": self.type_name, "towers": self.towers_settings, "net": self.net_config().to_dict(),
                "bits": self.bits, "model": self.weights, "floats": self.floats, "seed": self.seed,
                "batch_size": self.batch_size}

    def net_config(self) -> HashNetConfig:
        return self.net.config

    def encode(self, items: Sequence[Item], side: str) -> HashCodes:
        check_side(side)
        if isinstance(items, str):
            raise EncoderError("encode a list of items, not a single string")
        parts = []
        for start in range(0, len(items), self.batch_size):
            image, text = self.tower_features([item_parts(item) for item in items[start:start + self.batch_size]],
                                              side)
            parts.append(self._from_features(image, text))
        return HashCodes.concat(parts) if parts else self.from_features([], [])

    def from_features(self, image: Sequence[torch.Tensor | None], text: Sequence[torch.Tensor | None]) -> HashCodes:
        """Codes of items given their tower features per slot (None: the item has no such part); an item with both
        is the fused pair, hashed as ``sign(h_image + h_text)``. Runs ``batch_size`` items at a time (the Mamba
        block's state is ``(items, 2 * features, 16)``)."""
        parts = [self._from_features(image[start:start + self.batch_size], text[start:start + self.batch_size])
                 for start in range(0, len(image), self.batch_size)]
        return HashCodes.concat(parts) if parts else self._from_features([], [])

    @torch.no_grad()
    def _from_features(self, image: Sequence[torch.Tensor | None],
                       text: Sequence[torch.Tensor | None]) -> HashCodes:
        n = len(image)
        code, vector = torch.zeros(n, self.bits), torch.zeros(n, self.towers.features)
        for has_image, has_text in ((True, True), (True, False), (False, True)):
            rows = [row for row in range(n) if (image[row] is not None, text[row] is not None) == (has_image, has_text)]
            if not rows:
                continue
            image_in = torch.stack([image[row] for row in rows]) if has_image else None
            text_in = torch.stack([text[row] for row in rows]) if has_text else None
            out = self.net.encode(image_in, text_in, self.bits)
            code[rows] = sum(out[name] for name in ("image", "text") if name in out)
            vector[rows] = F.normalize(sum(x for x in (image_in, text_in) if x is not None), dim=-1)
        missing = [row for row in range(n) if image[row] is None and text[row] is None]
        if missing:
            raise EncoderError(f"item {missing[0]} has neither text nor an image")
        return HashCodes(np.packbits(code.numpy() > 0, axis=1), self.bits,
                         vector.numpy() if self.floats else None)

    @torch.no_grad()
    def tower_features(self, parts: list[tuple[str | None, str | None]],
                       side: str) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Per item, its image-slot and text-slot tower features (None where the item has no such part)."""
        n = len(parts)
        image: list[torch.Tensor | None] = [None] * n
        text: list[torch.Tensor | None] = [None] * n
        if isinstance(self.towers, TextTowers):
            if any(path is not None for path, _ in parts):
                raise EncoderError("a text-only prompthash encoder cannot encode images")
            rows = [row for row, (_, t) in enumerate(parts) if t is not None]
            vectors = torch.from_numpy(self.towers.encode([parts[row][1] for row in rows], side))
            target = image if side == "query" else text
            for row, vector in zip(rows, vectors, strict=True):
                target[row] = vector
            return image, text
        towers: ClipTowers = self.towers
        with_image = [row for row, (path, _) in enumerate(parts) if path is not None]
        if with_image:
            for row, vector in zip(with_image, towers.image(towers.pixels([parts[r][0] for r in with_image])),
                                   strict=True):
                image[row] = vector
        with_text = [row for row, (_, t) in enumerate(parts) if t is not None]
        if with_text:
            for row, vector in zip(with_text, towers.text(towers.tokens([parts[r][1] for r in with_text])),
                                   strict=True):
                text[row] = vector
        return image, text

    # ---- training and folders ----------------------------------------------------------------------------------
    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """What a checkpoint and an encoder folder keep: the net, the prompt context, the towers' trained blocks."""
        named = {f"net.{name}": p for name, p in self.net.named_parameters()}
        named["towers.ctx"] = self.towers.ctx
        tower_ids = {id(p) for p in self.towers.trainable_tower_parameters()}
        named.update({f"towers.{name}": p for name, p in self.towers.named_parameters() if id(p) in tower_ids})
        return named

    def train_mode(self, training: bool) -> None:
        self.net.train(training)
        self.towers.train(training)

    def load_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (OSError, RuntimeError) as error:
            raise EncoderError(f"{path}: cannot read prompthash weights: {error}") from None
        wanted = self.trainable()
        missing, extra = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
        if missing or extra:
            raise EncoderError(f"{path}: weights do not match the config (missing {missing[:3]}, extra {extra[:3]})")
        with torch.no_grad():
            for name, parameter in wanted.items():
                if parameter.shape != tensors[name].shape:
                    raise EncoderError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, expected "
                                       f"{tuple(parameter.shape)}")
                parameter.copy_(tensors[name])
        self.weights = str(path)

    def save(self, folder: str | Path) -> Path:
        """``xmr_encoder.json`` + ``prompthash.safetensors`` into ``folder`` (which must exist and be empty or new;
        callers write it through ``write_folder_atomically``)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({name: p.detach().contiguous().cpu() for name, p in self.trainable().items()},
                  str(folder / WEIGHTS_FILE))
        config = self.config() | {"model": WEIGHTS_FILE}
        write_encoder_config(folder, config)
        return folder

    def with_bits(self, bits: int) -> PromptHashEncoder:
        """The same weights emitting another of the net's code lengths (shares modules; no copy)."""
        other = object.__new__(PromptHashEncoder)
        other.__dict__.update(self.__dict__)
        if bits not in self.net.config.bits:
            raise EncoderError(f"bits {bits} is not one of {self.net.config.bits}")
        other.bits = int(bits)
        return other
