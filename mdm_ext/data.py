"""Token data: a byte-level tokenizer, a hook for other tokenizers, and a memory-mapped token file
with resumable random windows.

A token file is a flat array of integer ids with no header (the layout of nanoGPT's ``train.bin``),
so files written by other tools load as they are.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .files import UnusableFile, write_atomic

TOKEN_DTYPES = ("uint16", "uint32", "int32", "int64")


@runtime_checkable
class Tokenizer(Protocol):
    """What the package needs from a tokenizer; ``vocab_size`` counts the mask token."""

    vocab_size: int
    mask_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and a mask token 256: no vocabulary file to download."""

    vocab_size = 257
    mask_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the byte ids (list, array or tensor); mask and other ids are skipped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned file dtype holding ids 0..vocab_size - 1."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_tokens(path: str | os.PathLike, ids: Iterable[int] | np.ndarray | torch.Tensor,
                 dtype: str | np.dtype | None = None) -> np.dtype:
    """Write ``ids`` as a flat token file and return the dtype used (the reader needs it).

    ``dtype`` defaults to the smallest unsigned type that holds the largest id. The file appears
    atomically (temporary file, then rename), so a reader never sees half of it. A file that
    holds these ids already is left as it is: a rerun writes nothing (and needs no free space).
    """
    ids = np.asarray(ids.cpu().numpy() if isinstance(ids, torch.Tensor) else ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a non-empty 1-D sequence of integers, "
                         f"got {ids.dtype} of shape {ids.shape}")
    dtype = _checked_dtype(token_dtype(int(ids.max()) + 1) if dtype is None else dtype)
    if ids.min() < np.iinfo(dtype).min or ids.max() > np.iinfo(dtype).max:
        raise ValueError(f"ids in [{ids.min()}, {ids.max()}] do not fit dtype {dtype.name}")
    if not _holds(Path(path), ids, dtype):
        write_atomic(path, lambda file: file.write(ids.astype(dtype).tobytes()))
    return dtype


def _holds(path: Path, ids: np.ndarray, dtype: np.dtype) -> bool:
    """Whether the file ``path`` holds exactly ``ids`` as ``dtype``."""
    if not path.is_file() or path.stat().st_size != ids.size * dtype.itemsize:
        return False
    return bool(np.array_equal(np.memmap(path, dtype=dtype, mode="r"), ids))


def _checked_dtype(dtype: str | np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.name not in TOKEN_DTYPES:
        raise ValueError(f"dtype must be one of {TOKEN_DTYPES}, got {dtype.name}")
    return dtype


class TokenDataset:
    """A token file opened as a read-only memory map: ``tokens``: [N]."""

    def __init__(self, path: str | os.PathLike, dtype: str | np.dtype = "uint16",
                 vocab_size: int | None = None):
        self.path = Path(path)
        self.vocab_size = vocab_size
        dtype = _checked_dtype(dtype)
        n_bytes = self.path.stat().st_size
        if n_bytes == 0 or n_bytes % dtype.itemsize != 0:
            raise UnusableFile(self.path, f"holds {n_bytes} bytes, not a positive whole number of "
                                          f"{dtype.name} tokens")
        self.tokens = np.memmap(self.path, dtype=dtype, mode="r")

    @classmethod
    def from_text(cls, text: str, tokenizer: Tokenizer, path: str | os.PathLike) -> TokenDataset:
        """Tokenize ``text``, write it to ``path`` and open it. The tokenizer's mask must be its
        last id, as the package numbers them: the dataset's ids are 0..mask_id - 1."""
        if tokenizer.mask_id != tokenizer.vocab_size - 1:
            raise ValueError(f"tokenizer.mask_id must be its last id, vocab_size - 1 = "
                             f"{tokenizer.vocab_size - 1}, got {tokenizer.mask_id}")
        dtype = write_tokens(path, tokenizer.encode(text), token_dtype(tokenizer.vocab_size))
        return cls(path, dtype, tokenizer.mask_id)

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, step: int, batch_size: int, length: int, *, seed: int,
              rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Random windows of ``length`` consecutive tokens: [batch_size, length], int64.

        A pure function of (seed, step, rank): a run resumed at ``step`` sees exactly the batches
        of an uninterrupted one, and each rank draws from its own stream. Window starts come from
        raw Philox output keyed by ``numpy.random.SeedSequence``, both fixed algorithms, so the
        batches do not change between numpy versions either.
        """
        for name, value, low in (("step", step, 0), ("seed", seed, 0),
                                 ("batch_size", batch_size, 1), ("length", length, 1)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if length > len(self):
            raise ValueError(f"length {length} exceeds the {len(self)} tokens in {self.path}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
        n_starts = np.uint64(len(self) - length + 1)
        bit_generator = np.random.Philox(np.random.SeedSequence(seed, spawn_key=(step, rank)))
        # modulo bias is at most n_starts / 2^64: negligible for any file that fits on a disk
        starts = bit_generator.random_raw(batch_size) % n_starts
        windows = self.tokens[starts.astype(np.int64)[:, None] + np.arange(length)]
        if self.vocab_size is not None and (windows.min() < 0 or windows.max() >= self.vocab_size):
            raise UnusableFile(self.path, f"holds ids outside [0, vocab_size = {self.vocab_size})")
        return torch.from_numpy(windows.astype(np.int64))
