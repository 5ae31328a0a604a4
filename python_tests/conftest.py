"""Shared by the op tests: devices, float dtypes, input layouts and seeded random inputs."""
from typing import Callable

import pytest
import torch
from scipy import stats
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


def pooled_cells(expected: Tensor, min_expected: float) -> Tensor:
    """Chi-square cells [V] for expected counts [V]: tokens are pooled in ascending order of
    expected count until a cell expects >= min_expected (a short remainder joins the last full
    cell). Tokens of probability 0 get cell -1."""
    cells = torch.full(expected.shape, -1, dtype=torch.int64)
    cell, pooled = 0, 0.0
    for token in expected.argsort().tolist():
        if expected[token] == 0:
            continue
        cells[token] = cell
        pooled += float(expected[token])
        if pooled >= min_expected:
            cell, pooled = cell + 1, 0.0
    if pooled > 0 and cell > 0:
        cells[cells == cell] = cell - 1
    return cells


def chisquare_pvalue(drawn: Tensor, probs: Tensor, min_expected: float = 5.0) -> float:
    """p-value of the drawn tokens [...] against probabilities probs [V] (float64, summing to 1).
    Tokens of probability 0 must never be drawn."""
    drawn = drawn.flatten().cpu()
    observed = torch.bincount(drawn, minlength=len(probs)).double()
    expected = probs.cpu() * len(drawn)
    assert observed[expected == 0].sum() == 0, "a token of probability 0 was drawn"
    cells = pooled_cells(expected, min_expected)
    possible = cells >= 0
    n_cells = int(cells.max()) + 1

    def per_cell(counts: Tensor) -> Tensor:
        return torch.zeros(n_cells, dtype=torch.float64).index_add_(0, cells[possible], counts[possible])

    return float(stats.chisquare(per_cell(observed).numpy(), per_cell(expected).numpy()).pvalue)
