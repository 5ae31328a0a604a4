"""The float32 recipe's bias: the paper's truncated-Gumbel model against its defining integral and
against Monte Carlo, effective temperatures, and a one-step check that tells float32 from the
truth."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from conftest import chisquare_pvalue, seeded
from mdm_ext import reference, reproduce
from mdm_ext.precision import FLOAT32_GUMBEL_CAP, effective_temperature, tempered, truncated_gumbel_probs

# classes of repeated probabilities, a rare token and a zero
ROW = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.05, 0.05, 1e-3, 0.0], dtype=torch.float64)
ROW = ROW / ROW.sum()


def test_the_cap_is_that_of_24_bit_uniforms():
    assert FLOAT32_GUMBEL_CAP == pytest.approx(16.6355, abs=1e-4)
    assert FLOAT32_GUMBEL_CAP == pytest.approx(-math.log(-math.log(1 - 2.0**-24)), rel=1e-12)


def test_model_without_a_cap_is_the_distribution():
    torch.testing.assert_close(truncated_gumbel_probs(ROW, cap=math.inf), ROW, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cap", [0.5, 2.0, 6.0])
def test_model_matches_its_defining_integral(cap):
    # P(i) = int f(g) prod_{j != i} F(g + log p_i - log p_j) dg with the Gumbel truncated at the
    # cap: density e^-g G(g) / G(cap), CDF min(1, G(x) / G(cap)), G(x) = exp(-e^-x)
    p = ROW.numpy()
    top = math.exp(-math.exp(-cap))

    def cdf(x):
        return min(1.0, math.exp(-math.exp(-x)) / top)

    def probability(i):
        if p[i] == 0:
            return 0.0
        others = [j for j in range(len(p)) if j != i and p[j] > 0]
        kinks = [cap + math.log(p[j] / p[i]) for j in others if cap + math.log(p[j] / p[i]) < cap]
        integrand = lambda g: (math.exp(-g) * math.exp(-math.exp(-g)) / top
                               * math.prod(cdf(g + math.log(p[i] / p[j])) for j in others))
        return integrate.quad(integrand, -40, cap, points=[k for k in kinks if k > -40], limit=400,
                              epsabs=1e-14, epsrel=1e-11)[0]

    expected = torch.tensor([probability(i) for i in range(len(p))], dtype=torch.float64)
    torch.testing.assert_close(truncated_gumbel_probs(ROW, cap=cap), expected, rtol=1e-8, atol=1e-13)


def truncated_gumbel_max(probs: torch.Tensor, cap: float, draws: int, seed: int) -> torch.Tensor:
    """Draws of argmax log p + g, g = -log(e^-cap - log u): Gumbel conditioned on g <= cap."""
    u = torch.rand(draws, len(probs), dtype=torch.float64, generator=seeded(seed))
    return (probs.log() - torch.log(math.exp(-cap) - u.log())).argmax(-1)


def test_model_matches_monte_carlo():
    # chi-square at a 1e-3 false-alarm rate; the companion shows the test rejects the untruncated
    # distribution that these draws do not follow (noncentrality ~ 500 at 2e5 draws)
    drawn = truncated_gumbel_max(ROW, 1.0, 200_000, seed=0)
    assert chisquare_pvalue(drawn, truncated_gumbel_probs(ROW, cap=1.0)) > 1e-3
    assert chisquare_pvalue(drawn, ROW) < 1e-6


def test_temperature_of_tempered_sampling_is_recovered():
    tail = ROW < 0.06
    for temperature in (0.7, 1.0, 1.3):
        law = tempered(ROW[ROW > 0], temperature)
        for by in ("tail", "entropy"):
            found = effective_temperature(ROW[ROW > 0], law, by=by, tail=tail[ROW > 0])
            assert found == pytest.approx(temperature, rel=1e-8)
    # a cap lowers the temperature: the model's law is colder than the distribution
    law = truncated_gumbel_probs(ROW[ROW > 0], cap=1.0)
    assert effective_temperature(ROW[ROW > 0], law, by="entropy") < 1
    with pytest.raises(ValueError, match="tail"):
        effective_temperature(ROW, ROW, by="tail")
    with pytest.raises(ValueError, match="by"):
        effective_temperature(ROW, ROW, by="mass")


def test_model_refuses_bad_input():
    with pytest.raises(ValueError, match="probs"):
        truncated_gumbel_probs(torch.zeros(3))
    with pytest.raises(ValueError, match="cap"):
        truncated_gumbel_probs(ROW, cap=0.0)


def demo_row():
    config = reproduce.DEMO
    steps = math.ceil(config.bias_onsets * reproduce.onset_steps(config.bias_vocab, config.tail_mass))
    return config, reproduce.step_row(config.bias_vocab, config.successors, config.tail_mass, steps)


def test_the_one_step_check_has_the_power_to_tell():
    # The demo's row and draws: under the recipe's exact law, the binomial test of its tail share
    # against the truth rejects at the stated significance with probability > 0.999, while a
    # sampler of the truth is rejected with probability <= the significance.
    config, (probs, classes) = demo_row()
    tail = classes == 1
    true_share, law_share = float(probs[tail].sum()), float(reference.legacy_float32_probs(probs)[tail].sum())
    draws, level = config.bias_draws, reproduce.SIGNIFICANCE
    counts = np.arange(0, int(4 * true_share * draws))
    rejected = np.array([stats.binomtest(int(k), draws, true_share).pvalue < level for k in counts])
    assert stats.binom.pmf(counts, draws, law_share)[rejected].sum() > 0.999
    assert stats.binom.pmf(counts, draws, true_share)[rejected].sum() <= level
    assert law_share < 0.5 * true_share


@pytest.mark.slow
def test_the_one_step_check_tells_float32_from_the_truth():
    # the demo's check itself (40000 draws of each precision, about 15 s on 2 cores)
    result = reproduce.token_bias(reproduce.DEMO, torch.device("cpu"))
    assert result["tail_p"]["float32_vs_true"] < reproduce.SIGNIFICANCE
    assert result["tail_p"]["float32_vs_exact"] > 1e-3  # the exact law describes the recipe
    assert result["tail_p"]["float64_vs_true"] > 1e-3
    assert result["temperature"]["exact"]["tail"] < 1 and result["temperature"]["exact"]["entropy"] < 1
