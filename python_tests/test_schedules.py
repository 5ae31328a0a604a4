"""Masking schedules under MDLM's names, their inverses and derivatives, and an MDLM-shaped
network (``model(x, sigma)``) through the samplers."""
import math
from pathlib import Path

import pytest
import torch

from conftest import chisquare_pvalue
from mdm_ext import sample, schedules
from mdm_ext.denoiser import Denoiser
from mdm_ext.schedules import SCHEDULES, Schedule
from sampler_cases import LANGUAGE, MASK

T = torch.linspace(0, 1, 201, dtype=torch.float64)


def mdlm_sigma(t, schedule: Schedule):
    """MDLM's ``total_noise`` of each class, written from its definitions."""
    if schedule.name == "loglinear":
        return -torch.log1p(-(1 - schedule.eps) * t)
    if schedule.name == "sigma_linear":
        return schedule.sigma_min + t * (schedule.sigma_max - schedule.sigma_min)
    if schedule.name == "geometric":
        return schedule.sigma_min ** (1 - t) * schedule.sigma_max ** t
    cos = torch.cos(t * math.pi / 2)
    return -torch.log(schedule.eps + (1 - schedule.eps) * (cos if schedule.name == "cosine" else cos ** 2))


@pytest.mark.parametrize("name", [s for s in SCHEDULES if s != "alpha_linear"])
def test_alpha_is_exp_minus_mdlm_sigma(name):
    schedule = Schedule(name)
    torch.testing.assert_close(schedules.alpha(T, schedule), torch.exp(-mdlm_sigma(T, schedule)))
    torch.testing.assert_close(schedules.sigma(T, schedule), mdlm_sigma(T, schedule))


def test_mdlm_defaults_and_the_linear_trap():
    """MDLM's classes' defaults; MDLM's "linear" leaves alpha(0.5) = e^-5, far from 1 - t."""
    assert Schedule("loglinear").eps == Schedule("cosine").eps == 1e-3
    assert (Schedule("sigma_linear").sigma_min, Schedule("sigma_linear").sigma_max) == (0.0, 10.0)
    assert float(schedules.alpha(torch.tensor(0.5), "sigma_linear")) == pytest.approx(math.exp(-5))
    assert float(schedules.alpha(torch.tensor(0.5), "alpha_linear")) == 0.5
    with pytest.raises(ValueError, match="ambiguous.*alpha_linear.*sigma_linear"):
        schedules.get("linear")


@pytest.mark.parametrize("schedule", [*SCHEDULES, Schedule("sigma_linear", sigma_min=1e-4, sigma_max=20),
                                      Schedule("cosine", eps=0.0)], ids=str)
def test_inverse_and_derivative(schedule):
    inner = T[1:-1]
    a = schedules.alpha(inner, schedule)
    torch.testing.assert_close(schedules.alpha_inv(a, schedule), inner, rtol=1e-7, atol=1e-7)
    h = 1e-6
    numeric = (schedules.alpha(inner + h, schedule) - schedules.alpha(inner - h, schedule)) / (2 * h)
    torch.testing.assert_close(schedules.alpha_prime(inner, schedule), numeric, rtol=1e-5, atol=1e-8)
    assert bool((schedules.alpha(T[1:], schedule) < schedules.alpha(T[:-1], schedule)).all())  # decreasing
    clamped = schedules.alpha_inv(torch.tensor([1.0, 0.0], dtype=torch.float64), schedule)
    assert bool(((clamped >= 0) & (clamped <= 1)).all())


@pytest.mark.parametrize("arguments, pattern", [
    (dict(name="square"), "schedule must be one of"),
    (dict(name="loglinear", sigma_min=1.0), "takes"),
    (dict(name="alpha_linear", eps=0.1), "no parameters"),
    (dict(name="cosine", eps=1.0), "eps"),
    (dict(name="sigma_linear", sigma_min=2.0, sigma_max=1.0), "sigma"),
    (dict(name="geometric", sigma_min=0.0), "sigma_min > 0"),
])
def test_bad_schedules_are_named(arguments, pattern):
    with pytest.raises(ValueError, match=pattern):
        Schedule(**arguments)


class SigmaConditioned(torch.nn.Module):
    """A DiT-shaped stand-in: ``forward(indices, sigma)`` with sigma [B] the noise level, as
    MDLM's backbone takes it, returning log-probabilities [B, L, V + 1] (mask column -inf).
    Its output is the exact oracle, shifted by a tiny multiple of sigma so that a wrong or
    missing sigma would show, and it records every sigma it gets."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.sigmas: list[torch.Tensor] = []

    def forward(self, indices, sigma):
        assert sigma.shape == (indices.shape[0],) and sigma.dtype == torch.float32
        self.sigmas.append(sigma)
        logits = LANGUAGE(indices) * self.scale
        logits[..., 0] = logits[..., 0] + 1e-6 * sigma[:, None]
        return logits


def test_a_sigma_conditioned_network_through_first_hitting_and_ancestral():
    """The README's time-conditioned MDLM adapter: the network gets sigma_t = -log alpha_t of
    the schedule it was trained with, decreasing as the sampler goes; the time-agnostic adapter
    keeps the ancestral cache on (fewer rows evaluated)."""
    network = SigmaConditioned().eval()
    schedule = "loglinear"
    timed = Denoiser(lambda x, t: network(x, schedules.sigma(t, schedule).float()), needs_time=True,
                     device=next(network.parameters()).device)
    first = sample.first_hitting(timed, batch_size=4, length=8, mask_id=MASK, schedule=schedule, seed=0)
    sigmas = torch.stack(network.sigmas)  # [8 calls, 4]
    assert first.nfe == 8 and bool((sigmas[1:] < sigmas[:-1]).all()) and bool((sigmas > 0).all())
    assert float(sigmas.max()) < -math.log(1e-3) + 1e-3  # sigma_1 = -log eps
    network.sigmas.clear()
    ancestral = sample.ancestral(timed, batch_size=4, length=8, mask_id=MASK, steps=50, schedule=schedule, seed=0,
                                 noise_removal=True)
    assert (ancestral.tokens != MASK).all() and ancestral.nfe in (50, 51)  # every step (and a noise removal)
    steps = torch.stack([sigma[0] for sigma in network.sigmas])
    assert bool((steps[1:] < steps[:-1]).all()) and float(steps[-1]) < 0.03
    agnostic = Denoiser(lambda x: network(x, torch.zeros(x.shape[0])))  # MDLM's default: sigma ignored
    cached = sample.ancestral(agnostic, batch_size=4, length=8, mask_id=MASK, steps=50, schedule=schedule, seed=0)
    assert cached.nfe < 50


def test_noise_removal_fills_what_is_left_with_the_likeliest_tokens():
    """Two steps stopping at t = 0.5 leave tokens masked; noise removal fills each with the
    argmax of its conditional (here the greedy fill is checked against the oracle)."""
    calls = []

    def recorded(x, row):
        calls.append((x.clone(), row))
        return LANGUAGE(x)

    result = sample.ancestral(recorded, batch_size=64, length=6, mask_id=MASK, steps=2, noise_removal=True,
                              final_time=0.5, seed=1, network_kwargs=dict(row=torch.arange(64)))
    before, rows = calls[-1]
    masked = before == MASK
    assert len(calls) == 3 and bool(masked.any()) and (result.tokens != MASK).all()
    expected = LANGUAGE(before).argmax(-1)
    assert torch.equal(result.tokens[rows][masked], expected[masked])


@pytest.mark.parametrize("schedule", ["sigma_linear", "geometric", "cosinesqr"])
def test_first_hitting_is_exact_under_each_schedule_for_a_timed_network(schedule):
    """Exact first-hitting with a time-conditioned oracle (which ignores t): the first token's
    law is the stationary distribution whatever the schedule's times."""
    oracle = Denoiser(lambda x, t: LANGUAGE(x), needs_time=True)
    result = sample.first_hitting(oracle, batch_size=20_000, length=1, mask_id=MASK, schedule=schedule, seed=2)
    assert chisquare_pvalue(result.tokens, LANGUAGE.stationary) > 1e-4


def test_a_checkpoint_trained_under_the_former_linear_name_resumes():
    from dataclasses import asdict

    from mdm_ext.train import TrainConfig, _check_resumable

    config = TrainConfig(schedule="alpha_linear")
    _check_resumable({"config": {**asdict(config), "schedule": "linear"}, "world_size": 1}, config, 1, Path("run"))
    with pytest.raises(ValueError, match="schedule"):
        _check_resumable({"config": {**asdict(config), "schedule": "cosine"}, "world_size": 1}, config, 1,
                         Path("run"))
