"""MDLM's diffusion transformer (DiT), the network of the paper's experiments, and its released
checkpoints.

The architecture of MDLM (Sahoo et al. 2024, the ``DIT`` backbone of kuleshov-group/mdlm),
written with PyTorch's ``scaled_dot_product_attention`` instead of flash-attn:

- token embedding ``vocab_embed.embedding`` [V, D] (V counts the mask, the last id);
- a conditioning vector c = SiLU(MLP(sinusoidal features of sigma)) of ``cond_dim``, sigma the
  noise level -log(alpha_t); without time conditioning (MDLM's OpenWebText model) sigma is 0,
  so c is a constant the network learnt;
- ``n_blocks`` blocks of adaLN-modulated attention and MLP: LayerNorm without bias computed in
  float32, then x (1 + scale) + shift from a linear map of c, rotary attention (rotation of the
  halves of each head, base 10000, on queries and keys), a residual scaled by a gate from c;
  the MLP is 4 D wide with tanh-GELU;
- a final adaLN LayerNorm and a linear head with bias to V logits.

On CUDA the trunk runs under bfloat16 autocast, as MDLM's does; logits come back in float32.
The parameter names are MDLM's, so its state dicts load as they are (:func:`load_mdlm`).
"""
from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import apply_rotary, rotary_cos_sin

# MDLM's log-linear noise sigma(t) = -log(1 - (1 - eps) t), what a time-conditioned MDLM reads.
MDLM_NOISE_EPS = 1e-3
ROPE_BASE = 10000.0
FREQUENCY_FEATURES = 256  # sinusoidal features of sigma
MLP_RATIO = 4
# MDLM's Hugging Face config (kuleshov-group/mdlm-owt) -> DiTConfig field
_HF_CONFIG_KEYS = {"vocab_size": "vocab_size", "hidden_dim": "hidden_size", "cond_dim": "cond_dim",
                   "n_blocks": "n_blocks", "n_heads": "n_heads", "model_length": "length",
                   "dropout": "dropout", "time_conditioning": "time_conditioning"}
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class DiTConfig:
    """Sizes of a DiT; the defaults are MDLM's OpenWebText model (``kuleshov-group/mdlm-owt``)."""

    vocab_size: int = 50258  # GPT-2's 50257 tokens and the mask, id 50257
    hidden_size: int = 768
    cond_dim: int = 128
    n_blocks: int = 12
    n_heads: int = 12
    length: int = 1024
    dropout: float = 0.1
    time_conditioning: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "cond_dim", "n_blocks", "n_heads", "length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.hidden_size % self.n_heads or (self.hidden_size // self.n_heads) % 2:
            raise ValueError(f"hidden_size / n_heads must be an even integer, got "
                             f"{self.hidden_size} / {self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LayerNorm(nn.Module):
    """LayerNorm with a gain and no bias, computed in float32 whatever the autocast."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.float(), (x.shape[-1],)) * self.weight


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x: [B, L, D], shift and scale: [B, 1, D]."""
    return x * (1 + scale) + shift


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding[x]


class SigmaEmbedding(nn.Module):
    """sigma: [B] -> [B, cond_dim]: an MLP of cos and sin of sigma at 128 geometric frequencies."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_FEATURES, cond_dim), nn.SiLU(),
                                 nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: Tensor) -> Tensor:
        half = FREQUENCY_FEATURES // 2
        frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32,
                                                                device=sigma.device) / half)
        angles = sigma.float()[:, None] * frequencies
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))


class Rotary(nn.Module):
    """Holds the rotary frequencies base^(-2i/d) as MDLM's checkpoints do (``inv_freq``)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("inv_freq", ROPE_BASE ** (-torch.arange(0, head_dim, 2).float() / head_dim))

    def forward(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return rotary_cos_sin(length, self.head_dim, ROPE_BASE, device)


class Block(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.hidden_size
        self.n_heads = config.n_heads
        # registration order = MDLM's, so that its EMA parameter lists map one to one
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(MLP_RATIO * dim, dim))
        self.dropout = nn.Dropout(config.dropout)
        self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, c: Tensor) -> Tensor:
        """x: [B, L, D], c: [B, cond_dim] -> [B, L, D]."""
        batch, length, dim = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa))
        q, k, v = qkv.view(batch, length, 3, self.n_heads, dim // self.n_heads).unbind(dim=2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        x = x + gate_msa * self.dropout(self.attn_out(attended))
        return x + gate_mlp * self.dropout(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm_final = LayerNorm(config.hidden_size)
        self.linear = nn.Linear(config.hidden_size, config.vocab_size)
        self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * config.hidden_size)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Token ids [B, L] (the mask id, ``vocab_size - 1``, at masked positions) -> logits [B, L, V].

    A denoiser of :mod:`mdm_ext.sample` as it is: ``needs_time`` when the config is
    time-conditioned (it then reads the sampler's t as MDLM's sigma = -log(1 - (1 - 1e-3) t)),
    ``accepts_positions`` (the head runs at the requested positions only) and ``num_ids``.
    The mask column of the logits is left as the network outputs it (samplers exclude it).
    Initialised as MDLM initialises it (zero adaLN maps and head: a fresh model outputs zeros).
    """

    accepts_positions = True

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.vocab_embed = Embedding(config.vocab_size, config.hidden_size)
        self.sigma_map = SigmaEmbedding(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden_size // config.n_heads)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.output_layer = FinalLayer(config)

    @property
    def needs_time(self) -> bool:
        return self.config.time_conditioning

    @property
    def num_ids(self) -> int:
        return self.config.vocab_size

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size - 1

    def forward(self, x: Tensor, t: Optional[Tensor] = None, positions: Optional[Tensor] = None, *,
                sigma: Optional[Tensor] = None) -> Tensor:
        """x: [B, L] -> logits [B, L, V] float32, or [B, K, V] at ``positions``: [B, K].

        t: [B] times in [0, 1] of a time-conditioned model (or give ``sigma``: [B] directly);
        ignored otherwise, as MDLM zeroes sigma without time conditioning.
        """
        if x.dim() != 2 or x.shape[1] > self.config.length:
            raise ValueError(f"x must be [B, L] token ids with L <= {self.config.length}, got {tuple(x.shape)}")
        batch, length = x.shape
        if not self.config.time_conditioning:
            sigma = torch.zeros(batch, device=x.device)
        elif sigma is None:
            if t is None:
                raise ValueError("t or sigma is required: this DiT is time-conditioned")
            sigma = -torch.log1p(-(1 - MDLM_NOISE_EPS) * t.to(x.device, torch.float64)).float()
        c = F.silu(self.sigma_map(sigma))
        cos, sin = self.rotary_emb(length, x.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            h = self.vocab_embed(x)
            for block in self.blocks:
                h = block(h, cos, sin, c)
            if positions is not None:
                if positions.dim() != 2 or positions.shape[0] != batch:
                    raise ValueError(f"positions must be [B, K] with B = {batch}, got {tuple(positions.shape)}")
                h = torch.take_along_dim(h, positions[..., None], dim=1)
            return self.output_layer(h, c).float()


# Checkpoints.
def load_mdlm(path: Union[str, os.PathLike], *, ema: bool = True, map_location: Union[str, torch.device] = "cpu",
              **overrides: Any) -> DiT:
    """The DiT of an MDLM checkpoint, in eval mode on ``map_location``.

    path: a Hugging Face folder (``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``,
        as ``kuleshov-group/mdlm-owt`` is published; keys ``backbone.*``), or MDLM's Lightning
        ``.ckpt`` (``state_dict`` with keys ``backbone.*``, its moving average of the weights under
        ``ema``, its run configuration under ``hyper_parameters``).
    ema: the moving average of a Lightning checkpoint when it holds one (what MDLM samples and
        evaluates with); a Hugging Face folder holds one set of weights.
    overrides: DiTConfig fields the checkpoint does not say (e.g. ``n_heads`` of a Lightning
        checkpoint whose configuration cannot be read; default hidden_size / 64, as in every
        MDLM size).
    A Lightning checkpoint is read without running any code it holds: only tensors and plain
    containers are rebuilt, every other object comes back inert.
    """
    path = Path(path)
    if path.is_dir():
        weights, settings, average = *_read_hf(path), None
    elif path.is_file():
        weights, settings, average = _read_lightning(path)
    else:
        raise FileNotFoundError(f"no MDLM checkpoint at {path}")
    settings.update(overrides)
    model = DiT(_config_from(weights, settings))
    expected = model.rotary_emb.inv_freq
    saved = weights.pop("rotary_emb.inv_freq", expected)
    if saved.shape != expected.shape or not torch.allclose(saved.float(), expected, rtol=1e-6):
        raise ValueError(f"{path}: its rotary frequencies are not those of base {ROPE_BASE:g}: not an MDLM DiT")
    weights["rotary_emb.inv_freq"] = expected
    if ema and average is not None:
        # MDLM keeps the average as a list in the order of the backbone's parameters, which is
        # the order this module registers them in
        names = [name for name, _ in model.named_parameters()]
        if len(average) < len(names) or any(tensor.shape != weights[name].shape
                                             for name, tensor in zip(names, average)):
            raise ValueError(f"{path}: its moving average does not match its backbone's parameters")
        weights.update(zip(names, average))
    model.load_state_dict(weights, strict=True)
    return model.to(map_location).eval()


def is_mdlm_checkpoint(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` looks like an MDLM checkpoint (a folder with an MDLM config.json, or a
    file that is not a checkpoint of ``mdm-ext train``, whose entries are ``model_config``...)."""
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        return config.is_file() and "hidden_dim" in json.loads(config.read_text())
    return path.suffix == ".ckpt"


def _read_hf(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    config = json.loads((folder / "config.json").read_text())
    settings = {field: config[key] for key, field in _HF_CONFIG_KEYS.items() if key in config}
    file = next((folder / name for name in HF_WEIGHTS if (folder / name).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{folder} holds none of {', '.join(HF_WEIGHTS)}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(file)
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    return _backbone(state, str(file)), settings


def _read_lightning(file: Path) -> tuple[dict[str, Tensor], dict[str, Any], Optional[list[Tensor]]]:
    """(backbone weights, config fields found, the moving average's list of tensors or None)."""
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning pickles the run's configuration (and tokenizer) beside the tensors
        checkpoint = torch.load(file, map_location="cpu", weights_only=False, pickle_module=_TensorsOnly)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{file}: not an MDLM Lightning checkpoint (no state_dict)")
    weights = _backbone(checkpoint["state_dict"], str(file))
    average = checkpoint.get("ema")
    average = list(average["shadow_params"]) if isinstance(average, dict) and average.get("shadow_params") else None
    settings = _plain(checkpoint.get("hyper_parameters"))
    run = settings.get("config", {}) if isinstance(settings, dict) else {}
    model = run.get("model", {}) if isinstance(run, dict) else {}
    model = model if isinstance(model, dict) else {}
    found = {"n_heads": model.get("n_heads"), "length": model.get("length"),
             "dropout": model.get("dropout"), "time_conditioning": run.get("time_conditioning")}
    return weights, {key: value for key, value in found.items() if value is not None}, average


def _backbone(state: dict[str, Any], source: str) -> dict[str, Tensor]:
    weights = {key.removeprefix("backbone."): value for key, value in state.items()
               if key.startswith("backbone.") and isinstance(value, Tensor)}
    if "vocab_embed.embedding" not in weights:
        raise ValueError(f"{source}: no backbone.vocab_embed.embedding: not an MDLM DiT checkpoint")
    return weights


def _config_from(weights: dict[str, Tensor], settings: dict[str, Any]) -> DiTConfig:
    """The sizes the weights have, the rest from ``settings``."""
    vocab_size, hidden_size = weights["vocab_embed.embedding"].shape
    sizes = {"vocab_size": vocab_size, "hidden_size": hidden_size,
             "cond_dim": weights["sigma_map.mlp.0.weight"].shape[0],
             "n_blocks": len({key.split(".")[1] for key in weights if key.startswith("blocks.")}),
             "n_heads": hidden_size // 64}
    names = {field.name for field in fields(DiTConfig)}
    sizes.update({key: value for key, value in settings.items() if key in names})
    return DiTConfig(**sizes)


class _Inert:
    """Stands for any object of a checkpoint other than tensors and plain containers: it keeps
    what the pickle gives it (arguments, state, items) and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.state, self.items = args, None, {}

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


class _TensorsOnly:
    """A pickle module for ``torch.load`` that rebuilds tensors and plain containers and turns
    every other global into an :class:`_Inert` class: nothing of the file's code runs."""

    class Unpickler(pickle.Unpickler):
        _REBUILD = {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"}

        def find_class(self, module: str, name: str) -> Any:
            if module == "collections" and name == "OrderedDict":
                return super().find_class(module, name)
            if module == "torch._utils" and name in self._REBUILD:
                return super().find_class(module, name)
            if module in ("torch", "torch.storage") and (
                    name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
                return super().find_class(module, name)
            return type(name, (_Inert,), {})

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _TensorsOnly.Unpickler(file, **kwargs).load()


def _plain(value: Any) -> Any:
    """Plain dicts, lists and scalars out of a pickled configuration (omegaconf containers keep
    their items under ``_content`` and values under ``_val``); anything else as it is."""
    if isinstance(value, _Inert):
        state = value.state if isinstance(value.state, dict) else {}
        if "_content" in state:
            return _plain(state["_content"])
        if "_val" in state:
            return _plain(state["_val"])
        return value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def config_dict(model: DiT) -> dict[str, Any]:
    """The model's config as MDLM's Hugging Face ``config.json`` spells it."""
    values = asdict(model.config)
    return {"model_type": "mdlm", **{key: values[field] for key, field in _HF_CONFIG_KEYS.items()}}
