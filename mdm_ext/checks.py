"""Checks of user arguments: each error names the argument and what it must be."""
from __future__ import annotations

import numbers
import operator

import torch
from torch import Tensor


def integer(name: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` as an int: any integer (Python, numpy, a one-element integer tensor), never a
    bool or a float. TypeError otherwise; ValueError below ``minimum``."""
    try:
        if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {number}")
    return number


def real(name: str, value: object) -> float:
    """``value`` as a float: any real number (a one-element real tensor too) but a bool;
    TypeError otherwise."""
    real_tensor = (isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool
                   and not value.dtype.is_complex)
    if not real_tensor and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def mask_id(value: object, num_ids: int | None) -> int:
    """The mask id as an int >= 0, below ``num_ids`` (the ids the network takes) when known."""
    number = integer("mask_id", value, minimum=0)
    if num_ids is not None and number >= num_ids:
        raise ValueError(f"mask_id = {number} is not an id the network takes (it takes {num_ids} ids)")
    return number


def check_tokens(x: Tensor, name: str, *, num_ids: int | None = None) -> Tensor:
    """``x`` as int64, after checking it is a [B, L] integer tensor, L >= 1, of ids in [0, num_ids).

    Raises TypeError for a non-tensor or non-integer dtype, ValueError for a wrong shape or an id
    out of range; the message names ``name``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D with a non-empty last dim, got {tuple(x.shape)}")
    if num_ids is not None and x.numel() > 0:
        low, high = torch.stack(torch.aminmax(x)).tolist()  # one read of the device
        if low < 0 or high >= num_ids:
            raise ValueError(
                f"{name} must hold ids in [0, {num_ids}), got values in [{low}, {high}]"
            )
    return x.long()
