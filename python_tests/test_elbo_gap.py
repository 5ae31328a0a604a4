"""The log-linear schedule's ELBO gap. Given n of L tokens masked, the continuous-time objective
weights the masked cross-entropies by w_n = int -alpha'_t / (1 - alpha_t) P_t(n masked) dt;
sum_n n w_n = L (alpha_0 - alpha_1): L for schedules that reach alpha_1 = 0 (w_n = 1 / n, the
time-agnostic weights), L (1 - eps) for MDLM's log-linear one, whose alpha_1 = eps. The missing
weight sits at n = L, so its bound is below the time-agnostic one by about eps times the
cross-entropy of the fully masked sequence."""
import math
from itertools import product

import pytest
import torch
from scipy import integrate, special

from mdm_ext import schedules
from mdm_ext.language import MarkovLanguage
from mdm_ext.loss import masked_diffusion_loss

L = 4
LANGUAGE = MarkovLanguage.random(3, seed=0)


def weights(schedule: str, length: int) -> torch.Tensor:
    """w_n, n = 1..length, by quadrature of the schedule's own alpha and alpha'."""
    def integrand(t: float, n: int) -> float:
        a = float(schedules.alpha(torch.tensor(t, dtype=torch.float64), schedule))
        rate = -float(schedules.alpha_prime(torch.tensor(t, dtype=torch.float64), schedule)) / (1 - a)
        return rate * math.comb(length, n) * (1 - a) ** n * a ** (length - n)

    return torch.tensor([integrate.quad(integrand, 0, 1, args=(n,), epsabs=1e-13, epsrel=1e-11, limit=200)[0]
                         for n in range(1, length + 1)], dtype=torch.float64)


def eps_of(schedule: str) -> float:
    return float(schedules.alpha(torch.tensor(1.0, dtype=torch.float64), schedule))


@pytest.mark.parametrize("schedule", ["alpha_linear", "cosine", "loglinear", "cosinesqr"])
@pytest.mark.parametrize("length", [4, 32])
def test_weights_sum_to_the_schedules_span(schedule, length):
    w, n = weights(schedule, length), torch.arange(1, length + 1, dtype=torch.float64)
    eps = eps_of(schedule)
    assert float((n * w).sum()) == pytest.approx(length * (1 - eps), rel=1e-9)
    # closed form: w_n = (1 - I_eps(L - n + 1, n)) / n, the regularised incomplete beta function
    expected = (1 - special.betainc(length - n.numpy() + 1, n.numpy(), eps)) / n.numpy()
    torch.testing.assert_close(w, torch.from_numpy(expected), rtol=1e-8, atol=1e-12)
    if eps == 0:
        torch.testing.assert_close(w, 1 / n, rtol=1e-8, atol=0)


def masked_cross_entropy_by_count() -> torch.Tensor:
    """E[sum over the n masked tokens of -log p(x_i | unmasked)] for n = 1..L, x ~ the language,
    the n positions uniform: exact, by enumerating every sequence and every mask."""
    sequences = torch.tensor(list(product(range(3), repeat=L)))
    probability = LANGUAGE.log_likelihood(sequences).exp()
    by_count = torch.zeros(L, dtype=torch.float64)
    for mask in product([False, True], repeat=L):
        mask = torch.tensor(mask)
        n = int(mask.sum())
        if n == 0:
            continue
        log_probs = LANGUAGE(sequences.masked_fill(mask, LANGUAGE.mask_id), dtype=torch.float64)
        cross_entropy = -log_probs.gather(2, sequences[..., None])[..., 0][:, mask].sum(1)
        by_count[n - 1] += float((probability * cross_entropy).sum()) / math.comb(L, n)
    return by_count


def test_loglinear_bound_is_below_by_eps_times_the_masked_cross_entropy():
    by_count = masked_cross_entropy_by_count()
    n = torch.arange(1, L + 1, dtype=torch.float64)
    time_agnostic = float((by_count / n).sum())
    # the exact oracle makes the time-agnostic bound the exact entropy (paper, Prop. 3.1)
    assert time_agnostic == pytest.approx(LANGUAGE.sequence_entropy(L), rel=1e-10)
    loglinear = float((weights("loglinear", L) * by_count).sum())
    gap, eps = time_agnostic - loglinear, eps_of("loglinear")
    assert gap > 0
    # sum_n n (1/n - w_n) = L eps, nearly all at n = L: eps times the fully masked cross-entropy
    assert gap == pytest.approx(eps * float(by_count[-1]), rel=2 * L * eps)

    # the loss's own objectives estimate these two numbers (Monte Carlo within 4 standard errors;
    # the gap itself, 1e-3 of the bound, is below their resolution)
    x0 = LANGUAGE.sample(20000, L, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    for objective, expected in (("time_agnostic", time_agnostic), ("continuous", loglinear)):
        estimates = torch.cat([masked_diffusion_loss(LANGUAGE, x0, LANGUAGE.mask_id, objective=objective,
                                                     schedule="loglinear", normalize="sequence",
                                                     reduction="none", generator=generator).double()
                               for _ in range(4)])
        se = float(estimates.std()) / math.sqrt(len(estimates))
        assert abs(float(estimates.mean()) - expected) < 4 * se
