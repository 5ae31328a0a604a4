"""Checks of user arguments: each error names the argument and what it must be."""
from __future__ import annotations

import numbers
import operator
from typing import Optional

import torch
from torch import Tensor


def integer(name: str, value: object, *, minimum: Optional[int] = None) -> int:
    """``value`` as an int: any integer (Python, numpy, a one-element integer tensor), never a
    bool or a float. TypeError otherwise; ValueError below ``minimum``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {number}")
    return number


def real(name: str, value: object) -> float:
    """``value`` as a float: any real number but a bool; TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


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
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= num_ids:
            raise ValueError(
                f"{name} must hold ids in [0, {num_ids}), got values in [{low}, {high}]"
            )
    return x.long()
