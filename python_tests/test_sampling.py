"""gumbel_argmax and categorical: shapes, dtypes, layouts, tokens that must never be drawn, and
reproducibility of the counter-based noise. Their distributions are tested in
test_sampling_stats.py."""
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from scipy import stats
from torch import Tensor

from conftest import random_logits, seeded
from mdm_ext import ops, reference

ALPHA = 1e-4  # false-alarm rate of each statistical check below (fixed seeds: reproducible)

# [..., V]: V = 1 and 2, one row and many, a batch of several dims, multi-block rows.
SHAPES = [(1, 1), (1, 2), (257, 2), (300, 5), (2, 3, 50), (1, 600), (2, 50257)]


@dataclass(frozen=True)
class Sampler:
    """One sampling op in one mode, fed from logits."""

    op: Callable[..., Tensor]
    takes_logits: bool  # gumbel_argmax; categorical takes probabilities
    legacy_float32: bool

    def scores(self, logits: Tensor) -> Tensor:
        """What the op takes: the logits, or unnormalised probabilities e^logits (in range for
        float16 at the logit scales used here)."""
        return logits if self.takes_logits else logits.double().exp().to(logits.dtype)

    def __call__(self, scores: Tensor, **kwargs) -> Tensor:
        return self.op(scores, legacy_float32=self.legacy_float32, **kwargs)


SAMPLERS = {
    "gumbel_argmax": Sampler(ops.gumbel_argmax, True, False),
    "gumbel_argmax_legacy": Sampler(ops.gumbel_argmax, True, True),
    "categorical": Sampler(ops.categorical, False, False),
    "categorical_legacy": Sampler(ops.categorical, False, True),
}


@pytest.fixture(params=list(SAMPLERS))
def sampler(request) -> Sampler:
    return SAMPLERS[request.param]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shape_dtype_and_range(sampler, shape, dtype, device):
    drawn = sampler(sampler.scores(random_logits(shape, dtype, device)), seed=1)
    assert drawn.shape == shape[:-1] and drawn.dtype == torch.int64 and drawn.device.type == device
    assert bool(((drawn >= 0) & (drawn < shape[-1])).all())


@pytest.mark.parametrize(
    "shape, exclude",
    [(shape, exclude) for shape in SHAPES for exclude in (None, 0) if exclude is None or shape[-1] > 1],
    ids=str,
)
@pytest.mark.parametrize("legacy_float32", [False, True])
def test_temperature_zero_is_first_argmax(shape, exclude, legacy_float32, dtype, device):
    # Rounded logits tie often: the first maximal index must win, as in torch.argmax.
    logits = random_logits(shape, dtype, device).round()
    drawn = ops.gumbel_argmax(logits, temperature=0, exclude=exclude, seed=2, legacy_float32=legacy_float32)
    assert torch.equal(drawn, reference.gumbel_argmax_ref(logits, temperature=0, exclude=exclude))


@pytest.mark.parametrize("temperature", [1e-30, 1e-300, 5e-324], ids=str)
def test_tiny_temperature_draws_every_tied_maximum_and_nothing_else(temperature, dtype, device):
    """As T -> 0+, softmax(logits / T) tends to the uniform choice among the tied maxima (T = 0
    itself is the first argmax). logits / T used to swamp the noise or overflow (1 / T = inf below
    T = 5.6e-309), so that the first maximum always won. Frequencies: test_sampling_stats.py."""
    tied = [3, 300, 599]  # in three blocks
    logits = random_logits((600,), torch.float64).clamp(max=9.0)
    logits[tied] = 10.0
    logits[4] = 9.9  # just below, in the first maximum's block
    drawn = ops.gumbel_argmax(logits.to(device, dtype).expand(1000, -1), temperature=temperature, seed=13)
    assert drawn.unique().tolist() == tied


def test_scores_near_the_float64_maximum(device):
    """logits / T overflowed to inf for logits near 1.8e308 and T < 1 (the first maximum always
    won), and block sums of such probabilities overflowed (an "infinite probability" error)."""
    tied = [3, 300, 599]
    logits = torch.full((600,), 1.6e308, dtype=torch.float64)
    logits[tied] = 1.7e308
    logits[5] = -1.7e308  # its gap to the maximum overflows too
    drawn = ops.gumbel_argmax(logits.to(device).expand(1000, -1), temperature=0.5, seed=14)
    assert drawn.unique().tolist() == tied
    probs = torch.full((1000, 600), 1.7e308, dtype=torch.float64, device=device)
    assert len(ops.categorical(probs, seed=15).unique()) > 400  # 600 equally likely: 487 expected


def test_impossible_tokens_never_drawn(sampler, dtype, device):
    """-inf logits (zero probabilities), a whole block of them, and the excluded token, here the
    likeliest by far, are never drawn."""
    rows, vocab, likeliest = 2000, 600, 301
    impossible = torch.rand(rows, vocab, generator=seeded(3)) < 0.5
    impossible[:, :256] = True  # the whole first block
    impossible[:, [300, likeliest]] = False  # one possible token per row at least
    logits = random_logits((rows, vocab), dtype, device).masked_fill(impossible.to(device), -math.inf)
    logits[:, likeliest] = 10.0
    options = [{}]
    if sampler.takes_logits:
        impossible[:, likeliest] = True
        options = [{"exclude": likeliest}, {"exclude": likeliest, "temperature": 3.0}]
    for kwargs in options:
        drawn = sampler(sampler.scores(logits), seed=4, **kwargs).cpu()
        assert not bool(impossible.gather(1, drawn[:, None]).any())


def test_single_possible_token_is_always_drawn(sampler, device):
    vocab = 50257
    positions = torch.tensor([0, 255, 256, vocab - 1], device=device)
    logits = torch.full((len(positions), vocab), -math.inf, device=device)
    logits[torch.arange(len(positions)), positions] = 0.5
    assert torch.equal(sampler(sampler.scores(logits), seed=5), positions)


def test_draws_do_not_depend_on_layout(sampler, relayout, dtype, device):
    scores = sampler.scores(random_logits((64, 300), dtype, device))
    assert torch.equal(sampler(relayout(scores), seed=6), sampler(scores, seed=6))


def test_broadcast_rows_match_materialised_rows(sampler, dtype, device):
    broadcast = sampler.scores(random_logits((1, 50), dtype, device)).expand(500, 50)
    drawn = sampler(broadcast, seed=7)
    assert torch.equal(drawn, sampler(broadcast.contiguous(), seed=7))
    assert len(drawn.unique()) > 1  # the row index is part of the counter: rows differ


def test_batch_shape_does_not_change_draws(sampler, device):
    """A row's draw depends on its index in the flattened batch, not on how the batch is shaped."""
    scores = sampler.scores(random_logits((12, 40), torch.float32, device))
    assert torch.equal(sampler(scores.view(3, 4, 40), seed=8).flatten(), sampler(scores, seed=8))


def test_same_seed_and_offset_give_same_draws(sampler, device):
    scores = sampler.scores(random_logits((500, 40), torch.float32, device))
    assert torch.equal(sampler(scores, seed=9, offset=3), sampler(scores, seed=9, offset=3))


@pytest.mark.parametrize("stream", [{"seed": 9, "offset": 4}, {"seed": 10, "offset": 3}], ids=str)
def test_other_offset_or_seed_gives_independent_draws(sampler, stream, device):
    # Fair coins: independent streams agree on half the rows (zero correlation).
    rows = 100_000
    scores = sampler.scores(torch.full((rows, 2), 0.3, device=device))
    agree = int((sampler(scores, seed=9, offset=3) == sampler(scores, **stream)).sum())
    assert stats.binomtest(agree, rows, 0.5).pvalue > ALPHA


def test_seed_none_follows_torch_default_generator(sampler, device):
    scores = sampler.scores(random_logits((1000, 30), torch.float32, device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        first = sampler(scores)
        torch.manual_seed(11)
        again = sampler(scores)
        other = sampler(scores)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_cpu_and_cuda_draw_the_same(sampler, dtype, cuda):
    for shape in SHAPES:
        scores = sampler.scores(random_logits(shape, dtype, "cpu"))
        options = [{}]
        if sampler.takes_logits and shape[-1] > 1:
            options.append({"temperature": 0.7, "exclude": 0})
        for kwargs in options:
            on_cuda = sampler(scores.to(cuda), seed=12, offset=5, **kwargs).cpu()
            assert torch.equal(on_cuda, sampler(scores, seed=12, offset=5, **kwargs))
