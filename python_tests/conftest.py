"""Shared by the op tests: devices, float dtypes, input layouts and seeded random inputs."""
from typing import Callable

import pytest
import torch
from torch import Tensor


def _cuda_kernels_usable() -> bool:
    # Import the extension only where it matters, so that the pure-PyTorch tests in this
    # folder collect even without a built extension.
    if not torch.cuda.is_available():
        return False
    from mdm_ext import ops

    return ops.built_with_cuda()


DEVICES = ["cpu"] + (["cuda"] if _cuda_kernels_usable() else [])
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def seeded(seed: int) -> torch.Generator:
    """A CPU generator: inputs drawn with it are the same on every device."""
    return torch.Generator().manual_seed(seed)


def random_logits(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: str = "cpu", *, seed: int = 0,
    scale: float = 2.0,
) -> Tensor:
    """Normal logits [*shape] of standard deviation `scale`, drawn in float64 on the CPU and then
    cast, so that every device sees the same values."""
    return (scale * torch.randn(shape, generator=seeded(seed), dtype=torch.float64)).to(device, dtype)


def _padded(x: Tensor, rows: int, cols: int) -> Tensor:
    """A larger buffer around x, filled with NaN (-1 for integers) so that a kernel reading
    outside the view would be caught."""
    fill = float("nan") if x.is_floating_point() else -1
    return torch.full((rows, cols), fill, dtype=x.dtype, device=x.device)


def _transposed(x: Tensor) -> Tensor:
    return x.t().contiguous().t()


def _row_gaps(x: Tensor) -> Tensor:
    buffer = _padded(x, 2 * x.shape[0], x.shape[1])
    buffer[::2] = x
    return buffer[::2]


def _column_gaps(x: Tensor) -> Tensor:
    buffer = _padded(x, x.shape[0], 2 * x.shape[1])
    buffer[:, ::2] = x
    return buffer[:, ::2]


# The values of a [R, V] tensor under other strides: column-major, rows apart (rows still
# contiguous), elements apart. Results must not depend on the layout.
LAYOUTS = {"transposed": _transposed, "row_gaps": _row_gaps, "column_gaps": _column_gaps}


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda dtype: str(dtype).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=list(LAYOUTS))
def relayout(request) -> Callable[[Tensor], Tensor]:
    return LAYOUTS[request.param]


@pytest.fixture
def cuda() -> str:
    """The CUDA device, for tests that compare it with the CPU; skips where there is none."""
    if "cuda" not in DEVICES:
        pytest.skip("needs a CUDA device and the CUDA kernels")
    return "cuda"
