"""The samplers against a joint distribution known exactly.

A table over L = 4 positions and V = 5 tokens (625 cells, probabilities spanning three orders
of magnitude) is served by an oracle denoiser that returns the exact conditional of every masked
position given the unmasked ones. Driven by it, exact first-hitting must reproduce the table, and
N-step ancestral sampling must reproduce the law of the N-step ancestral chain, computed exactly
by propagating a distribution over all 6^4 partially masked states. ALPHA is each test's
false-alarm rate; seeds are fixed, so outcomes are reproducible.
"""
import itertools
import math

import pytest
import torch
from torch import Tensor

from conftest import chisquare_pvalue, seeded
from mdm_ext import sample
from mdm_ext.schedules import SCHEDULES, alpha

ALPHA = 1e-4
LENGTH, VOCAB = 4, 5
MASK = VOCAB
CELLS = torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))  # [625, L]
STATES = torch.tensor(list(itertools.product(range(VOCAB + 1), repeat=LENGTH)))  # [1296, L]


def joint_table() -> Tensor:
    """[625] float64 probabilities, log-uniform over three decades, then normalised."""
    weights = 10 ** (-3 * torch.rand(len(CELLS), generator=seeded(7), dtype=torch.float64))
    return weights / weights.sum()


TABLE = joint_table()


def _conditionals_by_enumeration(x: Tensor) -> Tensor:
    """p(x_i = v | unmasked tokens of x) for x: [B, L] -> [B, L, V] float64, by summing TABLE."""
    consistent = ((x[:, None, :] == MASK) | (x[:, None, :] == CELLS[None])).all(-1)  # [B, 625]
    one_hot = torch.nn.functional.one_hot(CELLS, VOCAB).double()  # [625, L, V]
    marginals = torch.einsum("bc,clv->blv", consistent * TABLE, one_hot)
    return marginals / marginals.sum(-1, keepdim=True)


def state_index(x: Tensor) -> Tensor:
    """[B, L] tokens (MASK allowed) -> [B] indices into STATES."""
    return (x * (VOCAB + 1) ** torch.arange(LENGTH - 1, -1, -1)).sum(1)


CONDITIONALS = _conditionals_by_enumeration(STATES)  # [1296, L, V], looked up by the oracle


class Oracle:
    """The exact denoiser: log-probabilities [B, L, V + 1], mask column -inf."""

    def __init__(self, *, accepts_positions: bool = False, needs_time: bool = False):
        self.accepts_positions = accepts_positions
        self.needs_time = needs_time

    def __call__(self, x: Tensor, t: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        assert (t is not None) == self.needs_time
        logits = torch.full((*x.shape, VOCAB + 1), -math.inf)
        logits[..., :VOCAB] = CONDITIONALS[state_index(x)].log().float()
        if positions is not None:
            logits = torch.take_along_dim(logits, positions[..., None], dim=1)
        return logits


def cell_index(tokens: Tensor) -> Tensor:
    """[B, L] tokens -> [B] indices into CELLS."""
    return (tokens * VOCAB ** torch.arange(LENGTH - 1, -1, -1)).sum(1)


def _ordered_partitions() -> list[list[list[int]]]:
    """The 75 ordered set partitions of the L positions: groups unmasked in one step, in order."""
    partitions = []
    for rank in itertools.product(range(LENGTH), repeat=LENGTH):
        groups = max(rank) + 1
        if set(rank) == set(range(groups)):
            partitions.append([[i for i in range(LENGTH) if rank[i] == g] for g in range(groups)])
    return partitions


def _marginal(positions: list[int]) -> Tensor:
    """TABLE's marginal of ``positions``, broadcast over all cells: [V] * L."""
    table = TABLE.view([VOCAB] * LENGTH)
    others = [i for i in range(LENGTH) if i not in positions]
    return table.sum(others, keepdim=True).expand_as(table) if others else table


def ancestral_law(steps: int, schedule: str) -> Tensor:
    """[625] exact law of the ``steps``-step ancestral sampler driven by the oracle.

    Whether a masked position unmasks at a step does not depend on any token, so each position's
    unmask step is independent with P(step j) = (alpha_{j+1} - alpha_j) / (1 - alpha_0). The law
    is a mixture over the ordered partitions of the positions into groups unmasked together: a
    group's tokens are drawn independently given the groups before it.
    """
    alphas = alpha(torch.linspace(1, 0, steps + 1, dtype=torch.float64), schedule)
    alphas[-1] = 1.0  # the sampler's last step lands on clean data, whatever alpha_0
    step_probs = (alphas[1:] - alphas[:-1]) / (1 - alphas[0])  # [N]
    law = torch.zeros([VOCAB] * LENGTH, dtype=torch.float64)
    total = 0.0
    for groups in _ordered_partitions():
        # sum over steps j_1 < ... < j_m of prod_g P(step j_g)^{|group g|}
        weight = step_probs ** len(groups[0])
        for group in groups[1:]:
            earlier = torch.cat([weight.new_zeros(1), weight.cumsum(0)[:-1]])
            weight = earlier * step_probs ** len(group)
        weight = float(weight.sum())
        total += weight
        tokens = torch.ones_like(law)
        known: list[int] = []
        for group in groups:
            for i in group:
                tokens *= _marginal(known + [i]) / (_marginal(known) if known else 1.0)
            known += group
        law += weight * tokens
    assert math.isclose(total, 1.0, rel_tol=1e-9)
    return law.flatten()


def drawn_cells(result: sample.SampleResult) -> Tensor:
    assert (result.tokens != MASK).all()
    return cell_index(result.tokens)


@pytest.mark.parametrize("options", [
    dict(), dict(accepts_positions=True), dict(needs_time=True), dict(accepts_positions=True, needs_time=True),
], ids=["full", "positions", "timed", "positions-timed"])
def test_first_hitting_reproduces_the_joint(options):
    oracle = Oracle(**options)
    result = sample.first_hitting(oracle, batch_size=50_000, length=LENGTH, mask_id=MASK, seed=1)
    assert result.nfe == LENGTH and result.categorical_draws == 50_000 * LENGTH
    assert chisquare_pvalue(drawn_cells(result), TABLE) > ALPHA


def test_first_hitting_with_per_sequence_seeds_reproduces_the_joint():
    """One seed per sequence (batch-invariant streams, each draw seeded by its own mixed seed)
    is as exact as one stream (fewer draws: every row is its own kernel call until the ops take
    seed tensors)."""
    result = sample.first_hitting(Oracle(accepts_positions=True), batch_size=6000, length=LENGTH, mask_id=MASK,
                                  seed=torch.arange(6000) * 7919 + 3)
    assert chisquare_pvalue(drawn_cells(result), TABLE) > ALPHA


def test_first_hitting_check_can_fail():
    """The same test rejects a sampler that draws the tokens at temperature 0.8."""
    result = sample.first_hitting(Oracle(), batch_size=100_000, length=LENGTH, mask_id=MASK, seed=1,
                                  temperature=0.8)
    assert chisquare_pvalue(drawn_cells(result), TABLE) < ALPHA


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ancestral_matches_its_exact_law(schedule):
    steps = 8  # few steps: several tokens often unmask together, so the law differs from TABLE
    law = ancestral_law(steps, schedule)
    result = sample.ancestral(Oracle(), batch_size=100_000, length=LENGTH, mask_id=MASK, steps=steps,
                              schedule=schedule, seed=2)
    assert chisquare_pvalue(drawn_cells(result), law) > ALPHA
    assert chisquare_pvalue(drawn_cells(result), TABLE) < ALPHA  # 8 steps are far from exact


@pytest.mark.slow
def test_ancestral_many_steps_reproduces_the_joint():
    """At 512 steps the ancestral law is within 2e-3 of the joint in total variation: at 50 000
    draws that moves the chi-square statistic by about 9 (its noncentrality), against a critical
    value 140 above its mean of 624, so the sampler must pass the joint's test."""
    result = sample.ancestral(Oracle(), batch_size=50_000, length=LENGTH, mask_id=MASK, steps=512, seed=3)
    assert chisquare_pvalue(drawn_cells(result), TABLE) > ALPHA


def test_ancestral_law_tends_to_the_joint():
    gaps = [float((ancestral_law(steps, "loglinear") - TABLE).abs().sum()) / 2 for steps in (8, 64, 512)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01


# A long-tailed table, where float32 sampling fails. In a 10^4-step ancestral run a token's
# per-step probability is p(v | x) / (N t); the legacy recipe's 24-bit noise distorts draws whose
# probability nears 2^-24 (about 6e-8). On the 625-cell table every conditional is large, so its
# bias there is of relative order 1e-3 and would need ~10^8 draws to show. Language models' bias
# comes from their long tails, so this table has one: two positions over 1024 tokens, the second
# Zipf-distributed given the first (and vice versa), most conditionals 1e-4 .. 1e-3.
TAIL_LENGTH, TAIL_VOCAB = 2, 1024
TAIL_MASK = TAIL_VOCAB


def zipf_pair_table() -> Tensor:
    """[V, V] float64: T[a, b] proportional to w_a w_{(a + b) mod V}, w_v = 1 / (v + 1)."""
    weights = 1.0 / torch.arange(1, TAIL_VOCAB + 1, dtype=torch.float64)
    shifted = (torch.arange(TAIL_VOCAB)[:, None] + torch.arange(TAIL_VOCAB)[None, :]) % TAIL_VOCAB
    table = weights[:, None] * weights[shifted]
    return table / table.sum()


TAIL_TABLE = zipf_pair_table()


class PairOracle:
    """The exact denoiser of TAIL_TABLE: log-probabilities [B, 2, V + 1], mask column -inf."""

    first = TAIL_TABLE.sum(1).log().float()  # [V]
    second = TAIL_TABLE.sum(0).log().float()
    first_given_second = (TAIL_TABLE / TAIL_TABLE.sum(0)).t().log().float()  # [b, a]
    second_given_first = (TAIL_TABLE / TAIL_TABLE.sum(1, keepdim=True)).log().float()  # [a, b]
    accepts_positions = needs_time = False

    def __call__(self, x: Tensor) -> Tensor:
        logits = torch.full((*x.shape, TAIL_VOCAB + 1), -math.inf)
        known = x != TAIL_MASK
        logits[:, 0, :TAIL_VOCAB] = torch.where(known[:, 1, None], self.first_given_second[x[:, 1] % TAIL_MASK],
                                                self.first)
        logits[:, 1, :TAIL_VOCAB] = torch.where(known[:, 0, None], self.second_given_first[x[:, 0] % TAIL_MASK],
                                                self.second)
        return logits


@pytest.mark.slow
@pytest.mark.parametrize("legacy_float32", [False, True], ids=["float64", "legacy-float32"])
def test_ancestral_many_steps_on_a_long_tail(legacy_float32):
    """10^4 ancestral steps reproduce the table with float64 sampling; the same test catches the
    float32 recipe, which undersamples the tail (cells pooled in order of probability into 8 of
    >= 100 expected draws each)."""
    result = sample.ancestral(PairOracle(), batch_size=800, length=TAIL_LENGTH, mask_id=TAIL_MASK,
                              steps=10_000, seed=5, legacy_float32=legacy_float32)
    cells = result.tokens[:, 0] * TAIL_VOCAB + result.tokens[:, 1]
    pvalue = chisquare_pvalue(cells, TAIL_TABLE.flatten(), min_expected=100)
    assert (pvalue < ALPHA) if legacy_float32 else (pvalue > ALPHA)


@pytest.mark.slow
def test_first_hitting_on_a_long_tail():
    result = sample.first_hitting(PairOracle(), batch_size=20_000, length=TAIL_LENGTH, mask_id=TAIL_MASK, seed=5)
    assert chisquare_pvalue(result.tokens[:, 0] * TAIL_VOCAB + result.tokens[:, 1], TAIL_TABLE.flatten()) > ALPHA
