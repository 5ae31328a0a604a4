"""first_hit_times and choose_masked: the first-hitting sampler's bookkeeping.

Their randomness is internal, so the kernels are held to the references through distributions
(Kolmogorov-Smirnov and chi-square tests) and through the uniforms recovered from their output.
ALPHA is the false-alarm rate of each statistical test; seeds are fixed, so outcomes reproduce.
"""
import itertools
import math

import pytest
import torch
from scipy import stats
from torch import Tensor

from conftest import seeded
from mdm_ext import ops, reference, schedules

ALPHA = 1e-4
MASK_ID = 50


def random_times_and_counts(rows: int, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor]:
    """t: [rows] in [0.05, 1] and n_masked: [rows] in [1, 50]."""
    generator = seeded(seed)
    t = 0.05 + 0.95 * torch.rand(rows, generator=generator, dtype=torch.float64)
    return t.to(dtype), torch.randint(1, 51, (rows,), generator=generator)


def recovered_uniforms(t: Tensor, n_masked: Tensor, next_time: Tensor, schedule: str) -> Tensor:
    """The u with next_time = alpha^-1(1 - u^{1/n} (1 - alpha_t)), in float64:
    u = ((1 - alpha(next_time)) / (1 - alpha(t)))^n."""
    def masked_mass(time: Tensor) -> Tensor:
        return 1 - schedules.alpha(time.double(), schedule)

    return (masked_mass(next_time) / masked_mass(t)).pow(n_masked.double())


@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
@pytest.mark.parametrize("time_dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_first_hit_times_follow_the_reference_at_uniform_u(schedule, time_dtype, device):
    """The uniforms behind the kernel's times are U(0, 1) (KS test), and the reference at those
    uniforms gives the kernel's times back."""
    t, n_masked = random_times_and_counts(100_000, time_dtype)
    next_time = ops.first_hit_times(t.to(device), n_masked.to(device), schedule=schedule, seed=41).cpu()
    assert next_time.dtype == time_dtype and bool(((next_time >= 0) & (next_time <= t)).all())
    u = recovered_uniforms(t, n_masked, next_time, schedule)
    # where alpha_0 < 1 (geometric) a hit can fall beyond t = 0, clamped there: u is then below
    # floor = u at t = 0, and uniform on [floor, 1) otherwise (floor = 0 for the other schedules)
    floor = recovered_uniforms(t, n_masked, torch.zeros_like(t), schedule)
    hit = next_time > 0
    assert stats.kstest(((u - floor) / (1 - floor))[hit].numpy(), "uniform").pvalue > ALPHA
    clamped, expected = int((~hit).sum()), float(floor.sum())
    assert abs(clamped - expected) <= 4 * math.sqrt(float((floor * (1 - floor)).sum())) + 1e-9
    tolerance = 1e-5 if time_dtype == torch.float32 else 1e-9
    torch.testing.assert_close(reference.first_hit_times_ref(t, n_masked, u, schedule), next_time,
                               rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
def test_first_hit_is_the_latest_of_the_token_unmask_times(schedule, device):
    """What the formula means: each of n tokens masked at t was masked at a time tau with
    P(tau <= s | tau <= t) = (1 - alpha_s) / (1 - alpha_t); going back from t, the first to be
    unmasked is the latest tau. Two-sample KS test against a direct simulation."""
    rows, n, start = 20_000, 7, 0.8
    t = torch.full((rows,), start, dtype=torch.float64)
    n_masked = torch.full((rows,), n, device=device)
    next_time = ops.first_hit_times(t.to(device), n_masked, schedule=schedule, seed=42)
    v = torch.rand(rows, n, generator=seeded(43), dtype=torch.float64)
    token_times = schedules.alpha_inv(1 - v * (1 - schedules.alpha(t[:, None], schedule)), schedule)
    assert stats.ks_2samp(next_time.cpu().numpy(), token_times.max(1).values.numpy()).pvalue > ALPHA


def test_rows_without_masked_tokens_keep_their_time(device):
    t, n_masked = random_times_and_counts(1000, torch.float32)
    n_masked[::3] = 0
    next_time = ops.first_hit_times(t.to(device), n_masked.to(device), seed=44).cpu()
    assert torch.equal(next_time[::3], t[::3]) and bool((next_time[1::3] < t[1::3]).all())


def test_first_hit_times_accept_strided_inputs(device):
    t, n_masked = random_times_and_counts(2000, torch.float64)
    t, n_masked = t.to(device), n_masked.to(device)
    strided = ops.first_hit_times(t[::2], n_masked[::2].int(), seed=45)
    assert torch.equal(strided, ops.first_hit_times(t[::2].contiguous(), n_masked[::2].contiguous(), seed=45))


def test_first_hit_times_streams(device):
    """Same seed and offset: same times; another offset: uncorrelated uniforms; seed None:
    torch's default generator."""
    t, n_masked = random_times_and_counts(50_000, torch.float64)
    t, n_masked = t.to(device), n_masked.to(device)
    first = ops.first_hit_times(t, n_masked, seed=46, offset=1)
    assert torch.equal(first, ops.first_hit_times(t, n_masked, seed=46, offset=1))
    other = ops.first_hit_times(t, n_masked, seed=46, offset=2)
    u_first, u_other = (recovered_uniforms(t, n_masked, times, "alpha_linear").cpu() for times in (first, other))
    assert stats.pearsonr(u_first.numpy(), u_other.numpy()).pvalue > ALPHA
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(47)
        default = ops.first_hit_times(t, n_masked)
        torch.manual_seed(47)
        assert torch.equal(ops.first_hit_times(t, n_masked), default)


def masked_tokens(rows: int, length: int, seed: int = 0) -> Tensor:
    """x: [rows, length] int64 tokens below MASK_ID, row r masked with probability r / (rows - 1):
    the first row has no masked position and the last is all masked."""
    generator = seeded(seed)
    x = torch.randint(0, MASK_ID, (rows, length), generator=generator)
    fraction = torch.linspace(0, 1, rows, dtype=torch.float64)[:, None]
    masked = torch.rand(rows, length, generator=generator, dtype=torch.float64) < fraction
    return x.masked_fill(masked, MASK_ID)


def test_choose_masked_chooses_min_of_k_and_masked_count(device):
    x = masked_tokens(200, 30).to(device)
    k = torch.randint(0, 40, (200,), generator=seeded(51)).to(device)  # some beyond the masked count
    masked = x == MASK_ID
    for counts in (k, 3):
        chosen = ops.choose_masked(x, MASK_ID, counts, seed=52)
        assert chosen.dtype == torch.bool and chosen.shape == x.shape
        assert not bool((chosen & ~masked).any())
        expected_counts = torch.minimum(torch.as_tensor(counts, device=device), masked.sum(1))
        assert torch.equal(chosen.sum(1), expected_counts)
        keys = torch.rand(x.shape, generator=seeded(53)).to(device)
        assert torch.equal(chosen.sum(1), reference.choose_masked_ref(x, MASK_ID, counts, keys).sum(1))
    assert not bool(chosen[0].any())  # the row without masks


def choose_with_kernel(x: Tensor, k: int, seed: int) -> Tensor:
    return ops.choose_masked(x, MASK_ID, k, seed=seed)


def choose_with_reference(x: Tensor, k: int, seed: int) -> Tensor:
    keys = torch.rand(x.shape, generator=seeded(seed)).to(x.device)
    return reference.choose_masked_ref(x, MASK_ID, k, keys)


CHOOSERS = {"kernel": choose_with_kernel, "reference": choose_with_reference}


@pytest.mark.parametrize("choose", CHOOSERS.values(), ids=list(CHOOSERS))
def test_single_choice_is_uniform_over_masked_positions(choose, device):
    rows = 40_000
    x = torch.tensor([MASK_ID, 1, MASK_ID, MASK_ID, 2, MASK_ID], device=device).expand(rows, -1)
    positions = choose(x, 1, 54).nonzero()[:, 1].cpu()
    counts = torch.bincount(positions, minlength=6)
    assert counts[[1, 4]].sum() == 0 and counts.sum() == rows
    assert stats.chisquare(counts[[0, 2, 3, 5]].numpy()).pvalue > ALPHA


@pytest.mark.parametrize("choose", CHOOSERS.values(), ids=list(CHOOSERS))
def test_pair_choice_is_uniform_over_pairs(choose, device):
    rows, length = 50_000, 5
    x = torch.full((rows, length), MASK_ID, device=device)
    chosen = choose(x, 2, 55).cpu()
    pair_ids = {pair: i for i, pair in enumerate(itertools.combinations(range(length), 2))}
    first, second = chosen.nonzero()[:, 1].view(rows, 2).unbind(1)
    counts = torch.bincount(first * length + second, minlength=length * length)
    counts = counts[[a * length + b for a, b in pair_ids]]
    assert counts.sum() == rows and stats.chisquare(counts.numpy()).pvalue > ALPHA


def test_choice_does_not_depend_on_layout(relayout, device):
    x = masked_tokens(64, 40).to(device)
    k = torch.arange(128, device=device)[::2] % 9  # a strided k
    assert torch.equal(ops.choose_masked(relayout(x), MASK_ID, k, seed=56),
                       ops.choose_masked(x, MASK_ID, k.contiguous(), seed=56))


def test_choice_streams(device):
    x = masked_tokens(500, 40).to(device)
    first = ops.choose_masked(x, MASK_ID, 5, seed=57, offset=1)
    assert torch.equal(first, ops.choose_masked(x, MASK_ID, 5, seed=57, offset=1))
    assert not torch.equal(first, ops.choose_masked(x, MASK_ID, 5, seed=57, offset=2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(58)
        default = ops.choose_masked(x, MASK_ID, 5)
        torch.manual_seed(58)
        assert torch.equal(ops.choose_masked(x, MASK_ID, 5), default)


@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
def test_cpu_and_cuda_agree(schedule, cuda):
    """Bit for bit, except cosine, whose cos / acos may differ in the last place."""
    t, n_masked = random_times_and_counts(10_000, torch.float64)
    on_cuda = ops.first_hit_times(t.to(cuda), n_masked.to(cuda), schedule=schedule, seed=59).cpu()
    on_cpu = ops.first_hit_times(t, n_masked, schedule=schedule, seed=59)
    tolerance = 1e-12 if schedule.startswith("cosine") else 0.0
    torch.testing.assert_close(on_cuda, on_cpu, rtol=tolerance, atol=tolerance)
    x = masked_tokens(300, 70)
    on_cuda = ops.choose_masked(x.to(cuda), MASK_ID, 9, seed=60).cpu()
    assert torch.equal(on_cuda, ops.choose_masked(x, MASK_ID, 9, seed=60))
