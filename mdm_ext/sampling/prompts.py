"""Prompts as users have them, laid out as a sampler's starting tokens [B, L]."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import checks

Prompt = Union[Tensor, Sequence[Union[Tensor, Sequence[int]]], None]


def _prompt_list(prefix: Sequence) -> list[Tensor]:
    prompts = []
    for i, prompt in enumerate(prefix):
        if not isinstance(prompt, Tensor):
            try:
                prompt = torch.tensor(list(prompt), dtype=torch.long)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"prefix[{i}] must be a 1-D tensor or a list of token ids, "
                                f"got {type(prompt).__name__}") from None
        if prompt.dim() != 1:
            raise ValueError(f"prefix[{i}] must be 1-D (one prompt), got shape {tuple(prompt.shape)}")
        prompts.append(prompt)
    return prompts


def starting_tokens(prefix: Prompt, *, batch_size: Optional[int], length: int, mask_id: int,
                    num_ids: Optional[int], device: torch.device) -> Tensor:
    """The [B, L] int64 tokens a sampler starts from: each row's prompt, then ``mask_id`` up to
    ``length`` (a prompt's own mask_id entries are generated too: infilling).

    prefix: None; one prompt [P] or [1, P] for every row; [B, P], one per row; or a list of B
        prompts (1-D tensors or lists of ids) of any lengths up to ``length``, row i holding its
        prompt in its first P_i positions. A nested tensor is a list.
    batch_size: B; may be omitted when the prefix holds one prompt per row.
    """
    length = checks.integer("length", length, minimum=1)
    if batch_size is not None:
        batch_size = checks.integer("batch_size", batch_size, minimum=1)
    if isinstance(prefix, Tensor) and prefix.is_nested:
        prefix = list(prefix.unbind())
    rows = None  # the number of prompts when there is one per sequence
    if isinstance(prefix, (list, tuple)):
        prompts = _prompt_list(prefix)
        if not prompts:
            raise ValueError("prefix must hold at least one prompt, got an empty list")
        rows = len(prompts)
    elif isinstance(prefix, Tensor):
        if prefix.dim() not in (1, 2):
            raise ValueError(f"prefix must have shape [P], [1, P] or [B, P], got {tuple(prefix.shape)}")
        prompts = [prefix]
        if prefix.dim() == 2 and (prefix.shape[0] > 1 or batch_size is None):
            rows = prefix.shape[0]
    elif prefix is not None:
        raise TypeError(f"prefix must be a tensor of token ids, a list of prompts or None, got {type(prefix).__name__}")
    if rows is not None and batch_size is not None and rows != batch_size:
        raise ValueError(f"prefix holds {rows} prompts ({'shape ' + str(tuple(prefix.shape)) if isinstance(prefix, Tensor) else 'a list'}), "
                         f"but batch_size = {batch_size}")
    batch_size = rows if rows is not None else batch_size
    if batch_size is None:
        raise ValueError("batch_size is required unless prefix holds one prompt per sequence "
                         "([B, P] or a list of prompts)")
    x = torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    if prefix is None:
        return x
    bad = next((p for p in prompts if p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool), None)
    if bad is not None:
        raise TypeError(f"prefix must hold integer token ids, got dtype {bad.dtype}")
    longest = max(p.shape[-1] for p in prompts)
    if longest > length:
        raise ValueError(f"prefix has {longest} positions, more than length = {length}")
    values = torch.cat([p.flatten() for p in prompts])
    if values.numel():
        low, high = torch.stack(torch.aminmax(values)).tolist()  # one read of the values
        if low < 0 or (num_ids is not None and high >= num_ids):
            raise ValueError(f"prefix must hold token ids in [0, {num_ids or 'V'}), got values in [{low}, {high}]")
    if isinstance(prefix, Tensor):
        x[:, : prefix.shape[-1]] = prefix.to(device)
    else:
        for row, prompt in enumerate(prompts):
            x[row, : len(prompt)] = prompt.to(device)
    return x


def prompt_lengths(prefix: Prompt, batch_size: int) -> list[int]:
    """Each row's prompt length, for a prefix :func:`starting_tokens` accepted."""
    if prefix is None:
        return [0] * batch_size
    if isinstance(prefix, Tensor) and not prefix.is_nested:
        return [prefix.shape[-1]] * batch_size
    return [len(prompt) for prompt in (prefix.unbind() if isinstance(prefix, Tensor) else prefix)]
