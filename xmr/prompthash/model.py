"""PromptHash's hashing network over tower features (the paper's adaptive gated fusion and hashing modules;
reference ``hash_model.py``:
``FusionTransMamba``, ``ResidualMLPs``, ``HashingEncoder``, ``HashingDecoder``, ``HashingModel``).

* :class:`MambaMixer`: a selective state-space block (Mamba's in-projection, causal depthwise convolution, input-
  dependent ``delta, B, C``, the selective scan of :mod:`xmr.prompthash.scan`, SiLU gate, out-projection).
* :class:`GatedFusion`: the adaptive gated fusion of the SSM block with a Transformer encoder layer over a token
  pair ``[image; text]`` (and ``[image; prompt]``). The reference mixes the SSM path and its skip with a fixed
  ``0.5 / 0.5`` and runs its ``TransformerEncoder`` over the batch axis (a 2-d input to a sequence-first layer);
  here both mixes are learned per-feature sigmoid gates (initialised at 0.5, the reference's value) and the
  Transformer layer attends within each item's token pair, as the paper describes.
* :class:`HashNet`: fusion, then one shared residual MLP and one ``tanh`` hash head per code length (16/32/64 by
  default) plus the auxiliary long code (256), and a decoder per short code that reconstructs the long code.

A side without its partner (an image query has no caption; a catalogue label has no image) is fused with a learned
``absent`` token; training replaces each partner by it with probability ``partner_dropout`` so that single-modality
codes, which are what an index stores and a query sends, are codes the network was trained to emit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from xmr.prompthash.scan import selective_scan


@dataclass
class HashNetConfig:
    """Sizes of :class:`HashNet`; ``features`` is the towers' output width."""

    features: int
    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    auxiliary_bits: int = 256  # the long code the short ones reconstruct (reference --auxiliary-bit-dim)
    mlp_layers: int = 2  # reference --res-mlp-layers
    dropout: float = 0.5  # reference --dropout
    heads: int = 4  # the fusion Transformer layer's heads (reference nhead=4)
    d_state: int = 16  # Mamba state size, convolution width and expansion (reference MambaLayer(16, 4, 2))
    d_conv: int = 4
    expand: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class MambaMixer(nn.Module):
    """Mamba block (Gu & Dao 2023, Fig. 3) with pre-LayerNorm and a residual connection: ``(b, L, d) -> (b, L, d)``."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        inner = expand * dim
        self.rank = math.ceil(dim / 16)  # dt_rank="auto" in mamba-ssm
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, self.rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)
        with torch.no_grad():  # dt initialised in [1e-3, 1e-1] as mamba-ssm does (inverse softplus of the bias)
            dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.d_state = d_state

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x, z = self.in_proj(self.norm(tokens)).chunk(2, dim=-1)
        x = F.silu(self.conv(x.transpose(1, 2))[..., :length])  # causal: drop the right padding
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        y = selective_scan(x, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2), self.D,
                           z.transpose(1, 2), self.dt_proj.bias, delta_softplus=True)
        return tokens + self.out_proj(y.transpose(1, 2))


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt V2) over the token axis of ``(b, L, d)``, as the reference's GRN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=1, keepdim=True)
        return self.gamma * (x * norm / (norm.mean(dim=-1, keepdim=True) + 1e-6)) + self.beta + x


class Gate(nn.Module):
    """``g * a + (1 - g) * b`` with ``g = sigmoid(W [a; b] + c)`` per feature, starting at 0.5."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.linear(torch.cat([a, b], dim=-1)))
        return gate * a + (1 - gate) * b


class GatedFusion(nn.Module):
    """SSM + Transformer fusion of a token pair ``(b, d), (b, d) -> (b, d), (b, d)`` (reference FusionTransMamba)."""

    def __init__(self, dim: int, heads: int, d_state: int, d_conv: int, expand: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.mamba = MambaMixer(dim, d_state, d_conv, expand)
        self.grn_ssm = GRN(dim)
        self.grn_pair = GRN(dim)
        self.gate = Gate(dim)
        self.transformer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, batch_first=True,
                                                      dropout=0.1)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pair = torch.stack([first, second], dim=1)  # (b, 2, d): the [image; text] token pair
        skip = self.in_proj(pair)
        ssm = self.out_proj(self.grn_ssm(self.mamba(pair)))
        fused = self.transformer(self.grn_pair(self.gate(ssm, skip)))
        fused = F.normalize(fused, dim=-1)
        return fused[:, 0], fused[:, 1]


class ResidualMLPs(nn.Module):
    """Pre-LayerNorm residual MLP blocks, shared by every modality (reference ResidualMLPs, hidden 4x)."""

    def __init__(self, dim: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                  nn.Dropout(dropout), nn.Linear(4 * dim, dim)) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


@dataclass
class HashOutput:
    """Continuous codes in (-1, 1) per code length for each side, reconstructions of the long code, and the
    residual features the alignment losses compare (L2-normalised)."""

    image: dict[int, torch.Tensor]
    text: dict[int, torch.Tensor]
    image_recon: dict[int, torch.Tensor]
    text_recon: dict[int, torch.Tensor]
    image_features: torch.Tensor
    text_features: torch.Tensor
    prompt_features: torch.Tensor | None = None


class HashNet(nn.Module):
    """Fusion + residual MLP + hash heads (reference HashingModel)."""

    def __init__(self, config: HashNetConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.features
        self.fusion = GatedFusion(dim, config.heads, config.d_state, config.d_conv, config.expand)
        self.residual_gate = Gate(dim)  # fused vs tower feature (reference: 0.5 * short + 0.5 * fused)
        self.absent = nn.Parameter(torch.zeros(dim))  # the partner of a side encoded alone
        self.mlp = ResidualMLPs(dim, config.mlp_layers, config.dropout)
        self.all_bits = [*config.bits, config.auxiliary_bits]
        self.encoders = nn.ModuleList(nn.Linear(dim, bits) for bits in self.all_bits)
        self.decoders = nn.ModuleList(nn.Sequential(nn.Linear(bits, config.auxiliary_bits), nn.ReLU(),
                                                    nn.Linear(config.auxiliary_bits, config.auxiliary_bits))
                                      for bits in config.bits)

    @torch.no_grad()
    def start_from_linear_hash(self, heads: dict[int, tuple[torch.Tensor, torch.Tensor]],
                               fused_share: float = 0.02) -> None:
        """Initialise the network so that its codes are ``sign(W x + b)`` of the tower features ``x`` (a linear
        hash such as PCA-ITQ, :func:`xmr.prompthash.itq.fit_itq`) for each code length in ``heads``: the residual
        MLP's output layers start at zero (each block the identity, as zero-initialised residual branches), the
        residual gate passes ``fused_share`` of the fused feature (the rest is the tower feature), and the hash
        heads are the given maps. Every part still trains: gradients reach the zeroed layers and the gate. The
        reference initialises all of it at random, which, without its pretrained CLIP features and long training,
        leaves a random projection of a random network (what text-only ESCO hashing started from before)."""
        for block in self.mlp.blocks:
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)
        nn.init.zeros_(self.residual_gate.linear.weight)
        self.residual_gate.linear.bias.fill_(math.log(fused_share / (1 - fused_share)))
        for bits, (weight, bias) in heads.items():
            head = self.encoders[self.all_bits.index(bits)]
            head.weight.copy_(weight)
            head.bias.copy_(bias)

    def partner(self, features: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        return self.absent.expand_as(like) if features is None else features

    def fuse(self, image: torch.Tensor | None, text: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused, gated features of each side (a missing side is the absent token; its output is unused)."""
        like = image if image is not None else text
        image_in, text_in = self.partner(image, like), self.partner(text, like)
        fused_image, fused_text = self.fusion(image_in, text_in)
        return self.residual_gate(fused_image, image_in), self.residual_gate(fused_text, text_in)

    def codes(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        hidden = self.mlp(features)
        return {bits: torch.tanh(encoder(hidden)) for bits, encoder in zip(self.all_bits, self.encoders, strict=True)}

    def encode(self, image: torch.Tensor | None, text: torch.Tensor | None, bits: int) -> dict[str, torch.Tensor]:
        """Continuous ``bits``-bit codes (and the residual features) of the sides given (inference)."""
        fused_image, fused_text = self.fuse(image, text)
        out = {}
        for name, given, fused in (("image", image, fused_image), ("text", text, fused_text)):
            if given is not None:
                hidden = self.mlp(fused)
                out[name] = torch.tanh(self.encoders[self.all_bits.index(bits)](hidden))
                out[f"{name}_features"] = F.normalize(hidden, dim=-1)
        return out

    def forward(self, image: torch.Tensor, text: torch.Tensor, prompt: torch.Tensor | None = None,
                drop_image: torch.Tensor | None = None, drop_text: torch.Tensor | None = None) -> HashOutput:
        """Training pass over paired features ``(b, d)``; ``drop_*`` (bool ``(b,)``) replace partners by the absent
        token. The [image; prompt] fusion gives the prompt feature of the local alignment only: the reference also
        hashes the image output of that fusion, but the prompt is built from the item's labels, which a query never
        has at search time (its ``get_code`` feeds the test items' ground-truth prompts)."""
        image_in = torch.where(drop_image[:, None], self.absent.expand_as(image), image) if drop_image is not None \
            else image
        text_in = torch.where(drop_text[:, None], self.absent.expand_as(text), text) if drop_text is not None else text
        fused_image, _ = self.fuse(image, text_in)
        _, fused_text = self.fuse(image_in, text)
        image_hidden, text_hidden = self.mlp(fused_image), self.mlp(fused_text)
        image_codes = {b: torch.tanh(e(image_hidden)) for b, e in zip(self.all_bits, self.encoders, strict=True)}
        text_codes = {b: torch.tanh(e(text_hidden)) for b, e in zip(self.all_bits, self.encoders, strict=True)}
        recon = {b: (torch.tanh(d(image_codes[b])), torch.tanh(d(text_codes[b])))
                 for b, d in zip(self.config.bits, self.decoders, strict=True)}
        output = HashOutput(image_codes, text_codes, {b: r[0] for b, r in recon.items()},
                            {b: r[1] for b, r in recon.items()}, F.normalize(image_hidden, dim=-1),
                            F.normalize(text_hidden, dim=-1))
        if prompt is not None:
            _, fused_prompt = self.fuse(fused_image, prompt)
            output.prompt_features = F.normalize(self.mlp(fused_prompt), dim=-1)
        return output
