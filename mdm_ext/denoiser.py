"""The one interface between mdm_ext and a user's masked diffusion network.

A denoiser is any callable ``f(x) -> logits`` with x: [B, L] int64 token ids (``mask_id`` at
masked positions) and logits: [B, L, V]. Two optional abilities, declared as attributes of the
callable or as arguments of :class:`Denoiser`:

- ``needs_time``: the network is time-conditioned and is called ``f(x, t)`` with t: [B] float
  times in [0, 1] (1 = fully masked), one per sequence. Time-agnostic networks (the paper's
  point) never receive t.
- ``accepts_positions``: the network takes ``positions=`` [B, K] and returns logits [B, K, V]
  at those positions only, so a first-hitting step pays the output head for the tokens it
  unmasks and nothing else. For other networks the rows are gathered after the full call.
- ``num_ids``: the number of token ids the network takes as input (its embedding's size, the
  mask included); samplers then reject a prefix or a mask id beyond it before calling it.

Adapting an existing model is one small function, e.g. an MDLM-style network that takes the
noise level sigma = -log(alpha_t)::

    denoiser = Denoiser(lambda x, t: mdlm(x, -torch.log(alpha(t, "loglinear"))), needs_time=True)

and sampled with the schedule it was trained under (``schedule="loglinear"``), so that the times
the sampler passes mean what the network learnt.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


class Denoiser:
    """A network, or any callable, seen through the interface above.

    Args:
        network: ``f(x)`` or, with ``needs_time``, ``f(x, t)``; optionally takes ``positions=``.
        needs_time: pass each sequence's time; default: ``network.needs_time`` or False.
        accepts_positions: default: ``network.accepts_positions`` or False.
        num_ids: default: ``network.num_ids`` or None (unknown).
    """

    def __init__(self, network: Callable[..., Tensor], *, needs_time: Optional[bool] = None,
                 accepts_positions: Optional[bool] = None, num_ids: Optional[int] = None) -> None:
        if isinstance(network, Denoiser):  # re-wrapping keeps the declared abilities
            needs_time = network.needs_time if needs_time is None else needs_time
            accepts_positions = network.accepts_positions if accepts_positions is None else accepts_positions
            num_ids = network.num_ids if num_ids is None else num_ids
            network = network.network
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}")
        self.network = network
        self.needs_time = bool(getattr(network, "needs_time", False) if needs_time is None else needs_time)
        self.accepts_positions = bool(
            getattr(network, "accepts_positions", False) if accepts_positions is None else accepts_positions)
        self.num_ids: Optional[int] = getattr(network, "num_ids", None) if num_ids is None else int(num_ids)

    def __call__(self, x: Tensor, *, t: Optional[Tensor] = None,
                 positions: Optional[Tensor] = None) -> Tensor:
        """x: [B, L] -> logits [B, L, V], or [B, K, V] at ``positions``: [B, K].
        t: [B] times, required when the network needs time, ignored otherwise."""
        args: tuple = (x,)
        if self.needs_time:
            if t is None:
                raise ValueError("t is required: this denoiser is time-conditioned (needs_time=True)")
            args = (x, t)
        if positions is not None and self.accepts_positions:
            logits = self.network(*args, positions=positions)
            expected = (*positions.shape,)
        else:
            logits = self.network(*args)
            expected = (*x.shape,)
        if not isinstance(logits, Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != expected:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the denoiser must return logits of shape [{', '.join(map(str, expected))}, V], "
                             f"got {shape}")
        if positions is not None and not self.accepts_positions:
            logits = torch.take_along_dim(logits, positions[..., None], dim=1)
        return logits
