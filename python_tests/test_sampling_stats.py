"""Sampled frequencies of gumbel_argmax and categorical against exact distributions.

ALPHA is the false-alarm rate of each test: an exact sampler fails it with probability ALPHA
for a random seed. The seeds are fixed, so every outcome is reproducible. Broadcast rows
(``expand``) give 10^6 draws of one distribution in one call: the row index is part of the
random counter, so the rows draw independently.
"""
import math
from dataclasses import dataclass, field

import pytest
import torch
from scipy import stats
from torch import Tensor

from conftest import chisquare_pvalue, random_logits, seeded
from mdm_ext import ops, reference

ALPHA = 1e-4
DRAWS = 1_000_000


def span_logits() -> Tensor:
    """[10] float64 logits whose probabilities span 1 to 1e-9, in shuffled order."""
    return torch.logspace(0, -9, 10, dtype=torch.float64).log()[torch.randperm(10, generator=seeded(0))]


def normal_logits(vocab: int, scale: float = 1.5) -> Tensor:
    """[vocab] float64 normal logits."""
    return random_logits((vocab,), torch.float64, seed=1, scale=scale)


def three_block_logits() -> Tensor:
    """[600] logits over three blocks of 256 tokens (the last one partial) with unequal masses;
    the middle block is all -inf and must be skipped."""
    logits = normal_logits(600, scale=2.0)
    logits[:256] += 1.0
    logits[256:512] = -math.inf
    return logits


def likeliest_excluded_logits() -> Tensor:
    logits = normal_logits(6)
    logits[2] = logits.max() + 2.0
    return logits


@dataclass
class Case:
    logits: Tensor  # [V], float64 unless the case is about float32
    options: dict = field(default_factory=dict)  # temperature / exclude
    draws: int = DRAWS


LOGIT_CASES = {
    "span_1_to_1e-9": Case(span_logits()),
    "temperature_0.6": Case(normal_logits(6), {"temperature": 0.6}),
    "temperature_2.5": Case(normal_logits(6), {"temperature": 2.5}),
    "exclude_likeliest": Case(likeliest_excluded_logits(), {"exclude": 2}),
    "three_blocks": Case(three_block_logits(), draws=100_000),
}


@pytest.mark.parametrize("case", LOGIT_CASES.values(), ids=list(LOGIT_CASES))
def test_gumbel_argmax_frequencies(case, device):
    logits = case.logits.float()
    drawn = ops.gumbel_argmax(logits.to(device).expand(case.draws, -1), seed=21, **case.options)
    assert chisquare_pvalue(drawn, reference.sampling_probs(logits, **case.options)) > ALPHA


@pytest.mark.parametrize("case", LOGIT_CASES.values(), ids=list(LOGIT_CASES))
def test_categorical_frequencies(case, device):
    """The same distributions as unnormalised float32 probabilities, zeros included."""
    probs = (1e-3 * reference.sampling_probs(case.logits, **case.options)).float()
    drawn = ops.categorical(probs.to(device).expand(case.draws, -1), seed=22)
    assert chisquare_pvalue(drawn, reference.sampling_probs(probs.double().log())) > ALPHA


def test_each_dtype_frequencies(dtype, device):
    logits = normal_logits(6).to(dtype)
    drawn = ops.gumbel_argmax(logits.to(device).expand(200_000, -1), temperature=0.8, seed=23)
    assert chisquare_pvalue(drawn, reference.sampling_probs(logits, 0.8)) > ALPHA


@pytest.mark.parametrize("name", ["span_1_to_1e-9", "temperature_0.6", "exclude_likeliest"])
def test_reference_gumbel_argmax_frequencies(name):
    """The float64 references follow sampling_probs too: the specification is consistent."""
    case = LOGIT_CASES[name]
    logits = case.logits.expand(case.draws, -1)
    drawn = reference.gumbel_argmax_ref(logits, generator=seeded(24), **case.options)
    assert chisquare_pvalue(drawn, reference.sampling_probs(case.logits, **case.options)) > ALPHA


def test_reference_categorical_frequencies():
    logits = span_logits()
    drawn = reference.categorical_ref(logits.exp().expand(DRAWS, -1), generator=seeded(25))
    assert chisquare_pvalue(drawn, reference.sampling_probs(logits)) > ALPHA


def test_chisquare_rejects_a_wrong_temperature():
    """The check above has power: draws at temperature 1.1 fail against temperature 1."""
    logits = normal_logits(6).float()
    drawn = ops.gumbel_argmax(logits.expand(DRAWS, -1), temperature=1.1, seed=26)
    assert chisquare_pvalue(drawn, reference.sampling_probs(logits)) < ALPHA


@pytest.mark.parametrize("op", [ops.gumbel_argmax, ops.categorical], ids=["gumbel_argmax", "categorical"])
def test_vocab_50257_frequencies(op):
    """A realistic vocabulary, tokens pooled into cells of >= 200 expected draws (about 20 cells
    of equal mass, so the tail is tested as a whole)."""
    logits = normal_logits(50257, scale=2.5).float()
    scores = logits if op is ops.gumbel_argmax else (logits - logits.max()).exp()
    drawn = op(scores.expand(4000, -1), seed=27)
    assert chisquare_pvalue(drawn, reference.sampling_probs(logits), min_expected=200) > ALPHA


def tied_maxima_logits(maximum: float, below: float) -> Tensor:
    """[600] float64 logits: `maximum` at tokens 3, 300 and 599 (three blocks), `below` elsewhere."""
    logits = torch.full((600,), below, dtype=torch.float64)
    logits[[3, 300, 599]] = maximum
    return logits


# Where logits / T overflows or swamps the noise, (logits - max) / T keeps the draw exact.
EXTREME_CASES = {
    # T -> 0+: uniform over the tied maxima, in float32 (1 / T overflows float32 below 2.9e-39)
    # and float64 (below 5.6e-309).
    "tiny_T_float32": Case(tied_maxima_logits(10.0, 9.9).float(), {"temperature": 1e-40}, 30_000),
    "tiny_T_float64": Case(tied_maxima_logits(10.0, 9.9), {"temperature": 5e-324}, 30_000),
    # Gaps of one and two subnormal steps at a subnormal T: probabilities softmax([0, -1, -2]).
    "subnormal_gaps_float32": Case(torch.tensor([0.0, -(2.0**-149), -(2.0**-148)]),
                                   {"temperature": 2.0**-149}, 100_000),
    "subnormal_gaps_float64": Case(torch.tensor([0.0, -5e-324, -1e-323], dtype=torch.float64),
                                   {"temperature": 5e-324}, 100_000),
    # Logits near the float64 maximum.
    "largest_logits_T_0.5": Case(tied_maxima_logits(1.7e308, 1.6e308), {"temperature": 0.5}, 30_000),
    "largest_logits_T_1e307": Case(torch.tensor([1.7e308, 1.69e308, 1.68e308, 0.0], dtype=torch.float64),
                                   {"temperature": 1e307}, 100_000),
}


@pytest.mark.parametrize("case", EXTREME_CASES.values(), ids=list(EXTREME_CASES))
def test_gumbel_argmax_extreme_frequencies(case, device):
    drawn = ops.gumbel_argmax(case.logits.to(device).expand(case.draws, -1), seed=32, **case.options)
    probs = reference.sampling_probs(case.logits, **case.options)
    assert chisquare_pvalue(drawn, probs) > ALPHA
    drawn = reference.gumbel_argmax_ref(case.logits.expand(case.draws, -1), generator=seeded(33), **case.options)
    assert chisquare_pvalue(drawn, probs) > ALPHA


def test_categorical_largest_probabilities_frequencies(device):
    """Probabilities up to the float64 maximum: a block's sum exceeds it."""
    probs = 1e308 + 7e307 * torch.rand(600, generator=seeded(34), dtype=torch.float64)
    drawn = ops.categorical(probs.to(device).expand(30_000, -1), seed=35)
    assert chisquare_pvalue(drawn, reference.sampling_probs(probs.log())) > ALPHA


@pytest.fixture(scope="module")
def legacy_case() -> tuple[Tensor, Tensor]:
    """Probabilities [4] and the exact distribution of the legacy recipe for them."""
    probs = torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64)
    return probs, reference.legacy_float32_probs(probs)


@pytest.mark.slow
def test_legacy_kernel_matches_exact_legacy_distribution(legacy_case, device):
    probs, legacy_probs = legacy_case
    broadcast = probs.float().to(device).expand(DRAWS, -1)
    drawn = ops.categorical(broadcast, seed=28, legacy_float32=True)
    assert chisquare_pvalue(drawn, legacy_probs) > ALPHA
    drawn = ops.gumbel_argmax(broadcast.log(), seed=29, legacy_float32=True)
    assert chisquare_pvalue(drawn, legacy_probs) > ALPHA


@pytest.mark.slow
def test_legacy_reference_matches_exact_legacy_distribution(legacy_case):
    probs, legacy_probs = legacy_case
    drawn = reference.legacy_float32_ref(probs.expand(DRAWS, -1), generator=seeded(30))
    assert chisquare_pvalue(drawn, legacy_probs) > ALPHA


def test_legacy_distribution_under_draws_unlikely_tokens():
    """Exactly, from legacy_float32_probs: a token e^-17 as likely as its rival is drawn at less
    than half its rate. The bias is real but, at ~4e-8 per draw, needs ~10^9 draws to see."""
    probs = torch.tensor([1.0, math.exp(-17.0)], dtype=torch.float64)
    legacy_probs = reference.legacy_float32_probs(probs)
    assert float(legacy_probs.sum()) == pytest.approx(1.0, abs=1e-12)
    assert legacy_probs[1] < 0.5 * probs[1] / probs.sum()


@pytest.mark.slow
def test_float64_draws_tokens_that_float32_noise_cannot():
    """Each of 65535 tail tokens is e^-19.87 ~ 2.4e-9 as likely as the head token. The legacy
    score ratio e(u) / e(u') of two 24-bit uniforms is at most e^19.77, so the legacy recipe can
    never draw them (legacy_float32_probs: exactly 0); the float64 kernel draws them at their
    rate: about 11 expected tail draws, so drawing none has probability e^-11 < ALPHA."""
    extremes = torch.tensor([0.0, 1 - 2**-24])  # float32 uniforms
    denominators = 1e-10 - (extremes + 1e-10).log()
    gap = math.log(denominators[0] / denominators[1]) + 0.1  # margin over float32 rounding
    vocab, rows = 2**16, 72_000
    logits = torch.full((vocab,), -gap, dtype=torch.float64)
    logits[0] = 0.0
    probs = reference.sampling_probs(logits)
    assert reference.legacy_float32_probs(probs)[1:].sum() == 0

    tail_draws = int((ops.gumbel_argmax(logits.expand(rows, -1), seed=31) != 0).sum())
    assert stats.binomtest(tail_draws, rows, float(1 - probs[0])).pvalue > ALPHA
    legacy = ops.gumbel_argmax(logits.expand(2048, -1), seed=31, legacy_float32=True)
    assert bool((legacy == 0).all())
