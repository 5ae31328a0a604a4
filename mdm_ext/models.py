"""Reference Transformer backbone for masked diffusion (bidirectional) and autoregressive (causal)
language models.

Pre-LayerNorm blocks (attention + GELU MLP) with rotary position embeddings and no time input:
a masked diffusion model reads the noise level off the mask tokens themselves. With
``causal=True`` the same network is the autoregressive baseline (logits at position i predict
token i + 1), so both model families are compared with identical architectures and sizes.

MDLM's diffusion transformer, the network of the paper's own experiments, is in
:mod:`mdm_ext.dit` (``DiT``, ``load_mdlm`` for its released checkpoints).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Layer counts and widths; vocab_size and max_len come from the data.
PRESETS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=64),  # CPU tests
    "small": dict(n_layer=12, n_head=12, n_embd=768),  # 162.3M params at V = 50258, untied
    "medium": dict(n_layer=24, n_head=16, n_embd=1024),
}


@dataclass
class TransformerConfig:
    vocab_size: int  # includes the mask token for masked diffusion models
    max_len: int
    n_layer: int
    n_head: int
    n_embd: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    causal: bool = False
    rope_base: float = 10000.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"head size n_embd / n_head must be even for rotary embeddings, "
                             f"got {self.n_embd // self.n_head}")

    @classmethod
    def preset(cls, name: str, *, vocab_size: int, max_len: int = 1024,
               **overrides) -> TransformerConfig:
        """A named size from ``PRESETS``; ``overrides`` set any other field (causal, dropout...)."""
        if name not in PRESETS:
            raise ValueError(f"name must be one of {tuple(PRESETS)}, got {name!r}")
        return cls(vocab_size=vocab_size, max_len=max_len, **{**PRESETS[name], **overrides})


def rotary_cos_sin(length: int, head_dim: int, base: float,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [length, head_dim / 2] in float32, the rotation angles position * base^(-2i/d)."""
    pair_index = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
    inv_freq = base ** (-pair_index / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + d/2}) of x: [B, L, H, d] by the angles of cos, sin: [L, d/2]."""
    # float32 rotation: angles at long positions lose their low bits in half precision
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.dropout_p = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).unbind(dim=2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            dropout_p=self.dropout_p if self.training else 0.0, is_causal=self.causal)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, L, D)))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd)
        self.proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), cos, sin)
        return x + self.mlp(self.ln_mlp(x))


class Transformer(nn.Module):
    """Token ids [B, L] -> logits [B, L, V]; bidirectional unless ``config.causal``."""

    # Samplers may pass ``positions`` to get logits only where they need them.
    accepts_positions = True

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: each block adds two residual terms, so shrink their projections to keep the
        # residual stream's variance independent of depth
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def num_ids(self) -> int:
        """The token ids it takes, the mask included (samplers check their inputs against it)."""
        return self.config.vocab_size

    def num_parameters(self) -> int:
        """Number of trainable scalars, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L] token ids -> h: [B, L, D], hidden states after the final LayerNorm."""
        if x.dim() != 2:
            raise ValueError(f"x must be [B, L] token ids, got shape {tuple(x.shape)}")
        if x.shape[1] > self.config.max_len:
            raise ValueError(f"x has length {x.shape[1]} > config.max_len {self.config.max_len}")
        head_dim = self.config.n_embd // self.config.n_head
        cos, sin = rotary_cos_sin(x.shape[1], head_dim, self.config.rope_base, x.device)
        h = self.emb_dropout(self.tok_emb(x))
        for block in self.blocks:
            h = block(h, cos, sin)
        return self.ln_f(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """h: [..., D] -> logits: [..., V]."""
        return self.lm_head(h)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L] -> logits: [B, L, V], or [B, K, V] at ``positions``: [B, K] when given.

        The output projection is the largest matmul at GPT-2 vocabulary sizes, so it runs only
        at the requested positions.
        """
        h = self.features(x)
        if positions is not None:
            if positions.dim() != 2 or positions.shape[0] != x.shape[0]:
                raise ValueError(f"positions must be [B, K] with B = {x.shape[0]}, "
                                 f"got shape {tuple(positions.shape)}")
            h = torch.take_along_dim(h, positions[..., None], dim=1)
        return self.head(h)
