"""The one interface between mdm_ext and a user's masked diffusion network.

A denoiser is any callable ``f(x) -> logits`` with x: [B, L] int64 token ids (``mask_id`` at
masked positions) and logits: [B, L, V], or an output with a ``.logits`` tensor (a transformers
``ModelOutput``: a Hugging Face masked LM passes as it is). Abilities, declared as attributes of
the callable or as arguments of :class:`Denoiser`:

- ``needs_time``: the network is time-conditioned and is called ``f(x, t)`` with t: [B] float
  times in [0, 1] (1 = fully masked), one per sequence. Time-agnostic networks (the paper's
  point) never receive t.
- ``accepts_positions``: the network takes ``positions=`` [B, K] and returns logits [B, K, V]
  at those positions only, so a first-hitting step pays the output head for the tokens it
  unmasks and nothing else. For other networks the rows are gathered after the full call. It
  must be declared (nothing is inferred from a signature with ``**kwargs``, which would swallow
  it), and a network declaring it must have a ``positions`` parameter.
- ``num_ids``: the number of token ids the network takes as input (its embedding's size, the
  mask included); samplers then reject a prefix or a mask id beyond it before calling it. Read
  from a module's input embedding when it has ``get_input_embeddings`` (transformers models).

Keyword arguments of a sampler's ``network_kwargs`` reach the network with every call.

Adapting an existing model is one small function; see README "Use it with your model" (MDLM:
time-agnostic by default, so no time is passed and the sampler's caching stays on).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor


def _declares_positions(network: Callable) -> bool:
    """Whether a callable's signature can take ``positions=`` (unknown signatures pass)."""
    try:
        parameters = inspect.signature(network).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "positions" or p.kind == p.VAR_KEYWORD for p in parameters)


def _is_transformers_model(network: Callable) -> bool:
    import sys

    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(network, transformers.PreTrainedModel)


class Denoiser:
    """A network, or any callable, seen through the interface above.

    Args:
        network: ``f(x)`` or, with ``needs_time``, ``f(x, t)``; optionally takes ``positions=``.
        needs_time: pass each sequence's time; default: ``network.needs_time`` or False.
        accepts_positions: default: ``network.accepts_positions`` or False. A transformers model
            never receives it (its ``**kwargs`` would swallow it).
        num_ids: default: ``network.num_ids``, a module's input embedding size, or None.
        device: where the network runs, for a callable that hides it (a lambda around a
            model); default: the device of a module's parameters.
    """

    def __init__(self, network: Callable[..., Any], *, needs_time: Optional[bool] = None,
                 accepts_positions: Optional[bool] = None, num_ids: Optional[int] = None,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        if isinstance(network, Denoiser):  # re-wrapping keeps the declared abilities
            needs_time = network.needs_time if needs_time is None else needs_time
            accepts_positions = network.accepts_positions if accepts_positions is None else accepts_positions
            num_ids = network.num_ids if num_ids is None else num_ids
            device = network.device if device is None else device
            network = network.network
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}")
        self.network = network
        self.needs_time = bool(getattr(network, "needs_time", False) if needs_time is None else needs_time)
        declared = getattr(network, "accepts_positions", False) if accepts_positions is None else accepts_positions
        self.accepts_positions = bool(declared)
        if self.accepts_positions and (_is_transformers_model(network) or not _declares_positions(network)):
            raise ValueError(f"accepts_positions=True, but {type(network).__name__} takes no positions= argument "
                             "(a transformers model's **kwargs would swallow it): leave it undeclared")
        if num_ids is None:
            num_ids = getattr(network, "num_ids", None)
            embeddings = getattr(network, "get_input_embeddings", None)
            if num_ids is None and callable(embeddings):
                num_ids = getattr(embeddings(), "num_embeddings", None)
        self.num_ids: Optional[int] = None if num_ids is None else int(num_ids)
        self.device: Optional[torch.device] = torch.device(device) if device is not None else _module_device(network)

    def warn_if_training(self) -> None:
        """A module in training mode (dropout on) gives different logits at every call."""
        if isinstance(self.network, torch.nn.Module) and self.network.training:
            warnings.warn(f"{type(self.network).__name__} is in training mode (dropout active): samples will not "
                          "follow the seed; call .eval() first", stacklevel=5)

    def __call__(self, x: Tensor, *, t: Optional[Tensor] = None, positions: Optional[Tensor] = None,
                 **network_kwargs: Any) -> Tensor:
        """x: [B, L] -> logits [B, L, V], or [B, K, V] at ``positions``: [B, K].
        t: [B] times, required when the network needs time, ignored otherwise."""
        args: tuple = (x,)
        if self.needs_time:
            if t is None:
                raise ValueError("t is required: this denoiser is time-conditioned (needs_time=True)")
            args = (x, t)
        if positions is not None and self.accepts_positions:
            logits = self.network(*args, positions=positions, **network_kwargs)
            expected = (*positions.shape,)
        else:
            logits = self.network(*args, **network_kwargs)
            expected = (*x.shape,)
        if not isinstance(logits, Tensor) and isinstance(getattr(logits, "logits", None), Tensor):
            logits = logits.logits  # a transformers ModelOutput
        if not isinstance(logits, Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != expected:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            hint = (" (it declares accepts_positions but returned every position)"
                    if positions is not None and self.accepts_positions and isinstance(logits, Tensor)
                    and tuple(logits.shape[:2]) == tuple(x.shape) else "")
            raise ValueError(f"the denoiser must return logits of shape [{', '.join(map(str, expected))}, V], "
                             f"got {shape}{hint}")
        if positions is not None and not self.accepts_positions:
            logits = torch.take_along_dim(logits, positions[..., None], dim=1)
        return logits


def _module_device(network: Callable) -> Optional[torch.device]:
    parameters = getattr(network, "parameters", None)
    if isinstance(network, torch.nn.Module) or callable(parameters):
        for parameter in parameters():
            return parameter.device
    return None
