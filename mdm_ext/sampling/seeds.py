"""Seeds of a sampler run: one stream for the batch, or one seed per sequence.

With one int seed the batch shares one Philox stream: call c of the run draws with
``(seed, offset=c)`` and row r of the call uses counter row r (the fast path: one kernel call).

With one seed per sequence the run is batch invariant: a sequence's draws depend only on its own
seed, its own call count and the positions drawn, never on the other rows or on the batch size.
Each draw site (sequence s, position p) of the c-th random call that sequence s takes part in
gets the Philox seed

    row_seed(seed[s], c, p) = splitmix64(splitmix64(splitmix64(seed[s]) ^ c) ^ p) >> 1

(SplitMix64's finaliser as the mixing function: distinct inputs give practically independent
63-bit seeds), with offset 0. The ops take one seed per row (interface agreed with the kernel
layer: row r with seed[r] draws exactly what a call on that row alone with the scalar seed[r]
draws); :func:`call_with_row_seeds` is the one place that relies on it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import checks, ops

if TYPE_CHECKING:
    from .processors import Sites

SeedArgument = Union[int, Sequence[int], Tensor, np.ndarray, None]

_GOLDEN = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB


def _as_int64(constant: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return constant - 2**64 if constant >= 2**63 else constant


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(z: Tensor) -> Tensor:
    """SplitMix64's step and finaliser on int64 tensors (wrapping arithmetic on the bit
    patterns, as uint64 would compute it)."""
    z = z + _as_int64(_GOLDEN)
    z = (z ^ _shift_right(z, 30)) * _as_int64(_MIX_1)
    z = (z ^ _shift_right(z, 27)) * _as_int64(_MIX_2)
    return z ^ _shift_right(z, 31)


def row_seed(sequence_seed: Tensor, call: Tensor, position: Tensor) -> Tensor:
    """The Philox seed of one draw site, in [0, 2^63): see the module docstring. All int64,
    broadcast together."""
    mixed = splitmix64(splitmix64(splitmix64(sequence_seed) ^ call) ^ position)
    return _shift_right(mixed, 1)


def call_with_row_seeds(op: Callable[..., Tensor], rows: tuple[Tensor, ...], *, seed: Union[int, Tensor],
                        offset: int, **kwargs) -> Tensor:
    """``op(*rows, seed=seed, offset=offset, **kwargs)`` where ``seed`` is an int or one seed per
    row ([N] int64; the tensors of ``rows`` have N rows along dim 0).

    Per-row seeds are emulated by one call per row on that row alone, which is their definition;
    ops that take a seed tensor make this a single call."""
    if not isinstance(seed, Tensor):
        return op(*rows, seed=seed, offset=offset, **kwargs)
    if seed.numel() == 0:
        return op(*rows, seed=0, offset=offset, **kwargs)
    return torch.cat([op(*(row[r:r + 1] for row in rows), seed=s, offset=offset, **kwargs)
                      for r, s in enumerate(seed.tolist())])


def sequence_seeds(seed: SeedArgument) -> Union[int, Tensor]:
    """The run's seed as given: an int in [0, 2^63) (None: drawn from torch's default generator,
    so that ``torch.manual_seed`` fixes it), or an int64 CPU tensor [B] of per-sequence seeds
    (a list, an array or a 1-D tensor)."""
    if seed is None:
        return ops.draw_seed()
    if isinstance(seed, (Tensor, np.ndarray)) and seed.ndim == 0:
        seed = seed.item() if isinstance(seed, np.ndarray) else seed
    if isinstance(seed, (list, tuple, np.ndarray, Tensor)):
        if isinstance(seed, (np.ndarray, Tensor)) and seed.ndim != 1:
            raise ValueError(f"seed must be an int or one seed per sequence [B], got shape {tuple(seed.shape)}")
        values = [checks.integer("seed entries", s) for s in seed]
        if not values:
            raise ValueError("seed must be an int or a non-empty sequence of ints")
        if not all(0 <= s < 2**63 for s in values):
            raise ValueError(f"seed entries must be in [0, 2^63), got {values}")
        return torch.tensor(values, dtype=torch.int64)
    number = checks.integer("seed", seed)
    if not 0 <= number < 2**63:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    return number


class Streams:
    """The random streams of a run (module docstring): an int seed and a call counter, or
    per-sequence seeds with one call counter per sequence."""

    def __init__(self, seed: Union[int, Tensor], batch_size: int, device: torch.device):
        self.shared: Optional[int] = seed if isinstance(seed, int) else None
        self.calls = 0  # the shared stream's offset
        if self.shared is None:
            if len(seed) != batch_size:
                raise ValueError(f"seed must be an int or hold one seed per sequence (B = {batch_size}), "
                                 f"got {len(seed)} seeds")
            self.seeds = seed.to(device)
            self.sequence_calls = torch.zeros(batch_size, dtype=torch.int64, device=device)

    def next(self, sites: Callable[[], "Sites"]) -> tuple[Union[int, Tensor], int]:
        """(seed, offset) of the next random call at the sites ``sites()`` returns (asked for
        only with per-sequence seeds): the shared seed and the next offset, or one seed per site
        (flattened). Every sequence the sites name takes part in the call: its own counter
        moves on."""
        if self.shared is not None:
            self.calls += 1
            return self.shared, self.calls - 1
        where = sites()
        sequences, positions = where.sequences.flatten(), where.positions.flatten()
        seeds = row_seed(self.seeds[sequences], self.sequence_calls[sequences], positions)
        self.sequence_calls[sequences] = self.sequence_calls[sequences] + 1
        return seeds, 0
