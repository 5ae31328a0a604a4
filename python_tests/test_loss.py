"""The masked diffusion losses: both objectives estimate the exact ELBO, masks follow their
laws, padding carries no loss, and bad input is named.

Monte Carlo checks use fixed seeds and a tolerance of TOLERANCE_SE standard errors of the
estimate; the exact value they are held to comes from enumerating every mask of short sequences.
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import chisquare_pvalue, seeded
from mdm_ext import reference, schedules
from mdm_ext.denoiser import Denoiser
from mdm_ext.loss import autoregressive_loss, masked_diffusion_loss
from mdm_ext.schedules import Schedule
from mdm_ext.models import Transformer, TransformerConfig

VOCAB = 5  # real tokens 0..4
MASK_ID = VOCAB
LENGTH = 6
TOLERANCE_SE = 4.0


def tiny_network(length: int = LENGTH, device: str = "cpu") -> Transformer:
    """A fixed, untrained bidirectional Transformer: a time-independent denoiser whose
    predictions depend on the context."""
    torch.manual_seed(0)
    config = TransformerConfig.preset("tiny", vocab_size=VOCAB + 1, max_len=length)
    return Transformer(config).to(device).eval()


def clean_batch(batch_size: int = 4, length: int = LENGTH, seed: int = 1) -> Tensor:
    return torch.randint(0, VOCAB, (batch_size, length), generator=seeded(seed))


@torch.no_grad()
def exact_nelbo_per_token(network: Transformer, x0: Tensor, weight_of_n=lambda n, length: 1 / n) -> Tensor:
    """[B] float64: (1/L) sum over the nonempty masks S, |S| = n, of w(n) / C(L, n) * sum_{i in S} CE:
    the NELBO per token for w(n) = 1/n (n ~ U{1..L}, weight L/n, then the 1/L of "token")."""
    batch, length = x0.shape
    masks = torch.tensor([[i in subset for i in range(length)]
                          for n in range(1, length + 1) for subset in itertools.combinations(range(length), n)])
    x_t = x0[:, None, :].masked_fill(masks, MASK_ID)  # [B, 2^L - 1, L]
    logits = network(x_t.flatten(0, 1)).double().view(batch, len(masks), length, -1)
    ce = reference.masked_cross_entropy_ref(logits, x0[:, None, :].expand_as(x_t), MASK_ID)
    n = masks.sum(1)
    subset_weight = torch.tensor([weight_of_n(k, length) / math.comb(length, k) for k in n.tolist()],
                                 dtype=torch.float64)
    return ((ce * masks).sum(-1) * subset_weight).sum(-1) / length


COSINE = Schedule("cosine", eps=0.0)  # alpha_1 = 0: the continuous ELBO equals the time-agnostic one
MC_CASES = [
    ("time_agnostic", "alpha_linear", False),
    ("time_agnostic", COSINE, True),
    ("continuous", "alpha_linear", False),
    ("continuous", COSINE, False),
    ("continuous", COSINE, True),
]


@pytest.mark.parametrize("objective, schedule, stratified", MC_CASES)
def test_objectives_estimate_the_exact_elbo(objective, schedule, stratified):
    network = tiny_network()
    x0 = clean_batch()
    exact = float(exact_nelbo_per_token(network, x0).mean())
    draws = 1000
    repeated = x0.repeat(draws, 1)  # every row of x0 equally often
    with torch.no_grad():
        per_sequence = masked_diffusion_loss(network, repeated, MASK_ID, objective=objective,
                                             schedule=schedule, stratified=stratified,
                                             reduction="none", generator=seeded(2)).double()
    estimate = float(per_sequence.mean())
    standard_error = float(per_sequence.std()) / math.sqrt(len(per_sequence))
    assert abs(estimate - exact) < TOLERANCE_SE * standard_error, (estimate, exact, standard_error)
    # the test has power: weighting masks uniformly instead of by 1/n is many errors away
    unweighted = float(exact_nelbo_per_token(network, x0, lambda n, length: 1 / length).mean())
    assert abs(unweighted - exact) > 5 * TOLERANCE_SE * standard_error


def test_time_agnostic_has_lower_variance():
    network = tiny_network()
    x0 = clean_batch().repeat(500, 1)
    with torch.no_grad():
        spread = {objective: float(masked_diffusion_loss(network, x0, MASK_ID, objective=objective,
                                                         reduction="none", generator=seeded(3)).std())
                  for objective in ("time_agnostic", "continuous")}
    assert spread["time_agnostic"] < spread["continuous"]


def test_sequence_normalization_is_length_times_token():
    network = tiny_network()
    x0 = clean_batch()
    per_token, per_sequence = (masked_diffusion_loss(network, x0, MASK_ID, normalize=normalize,
                                                     generator=seeded(4))
                               for normalize in ("token", "sequence"))
    torch.testing.assert_close(per_sequence, LENGTH * per_token)


class Recorder:
    """A time-conditioned denoiser that records its inputs and returns uniform logits."""

    needs_time = True

    def __init__(self) -> None:
        self.x, self.t = [], []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.x.append(x)
        self.t.append(t)
        return torch.zeros(*x.shape, VOCAB + 1)


def recorded(objective: str, batch_size: int, *, length: int = 8, schedule: str = "alpha_linear",
             stratified: bool = False, seed: int = 5) -> tuple[Tensor, Tensor]:
    """(masked count [B], time [B]) that masked_diffusion_loss hands a time-conditioned network."""
    recorder = Recorder()
    masked_diffusion_loss(recorder, clean_batch(batch_size, length), MASK_ID, objective=objective,
                          schedule=schedule, stratified=stratified, generator=seeded(seed))
    (x,), (t,) = recorder.x, recorder.t
    return (x == MASK_ID).sum(1), t


def test_time_agnostic_masks_a_uniform_count_and_passes_its_linear_time():
    length = 8
    n_masked, t = recorded("time_agnostic", 8000, length=length)
    assert chisquare_pvalue(n_masked - 1, torch.full((length,), 1 / length, dtype=torch.float64)) > 1e-4
    torch.testing.assert_close(t, n_masked / length)


def test_stratified_counts_cover_every_level():
    length = 8
    n_masked, _ = recorded("time_agnostic", 3 * length, length=length, stratified=True)
    assert torch.equal(n_masked.bincount(minlength=length + 1)[1:], torch.full((length,), 3))
    _, t = recorded("continuous", 50, stratified=True)
    strata = ((1 - t.double()) * 50).floor().long()
    assert torch.equal(strata.sort().values, torch.arange(50))


@pytest.mark.parametrize("schedule", ["alpha_linear", "cosine", "sigma_linear"])
def test_continuous_masks_each_token_with_probability_one_minus_alpha(schedule):
    length = 8
    n_masked, t = recorded("continuous", 8000, length=length, schedule=schedule)
    assert bool((t > 0).all()) and bool((t <= 1).all())
    assert abs(float(t.double().mean()) - 0.5) < TOLERANCE_SE * math.sqrt(1 / 12 / len(t))
    p = 1 - schedules.alpha(t.double(), schedule)
    deviation = float(n_masked.sum() - length * p.sum())
    assert abs(deviation) < TOLERANCE_SE * math.sqrt(float((length * p * (1 - p)).sum()))


class GarbageAtPadding:
    """Gives the network's logits at masked positions and large random logits at padding slots,
    counting the slots it was asked for."""

    accepts_positions = True

    def __init__(self, network: Transformer) -> None:
        self.network = network
        self.padding_slots = 0

    def __call__(self, x: Tensor, positions: Tensor) -> Tensor:
        logits = self.network(x, positions)
        padding = x.gather(1, positions) != MASK_ID
        self.padding_slots += int(padding.sum())
        garbage = 100 * torch.randn(logits.shape, generator=seeded(6))
        return torch.where(padding[..., None], garbage, logits)


@pytest.mark.parametrize("objective", ["time_agnostic", "continuous"])
def test_padding_slots_carry_no_loss(objective):
    network = tiny_network()
    x0 = clean_batch(16)
    garbage = GarbageAtPadding(network)
    loss = masked_diffusion_loss(garbage, x0, MASK_ID, objective=objective, generator=seeded(7))
    assert garbage.padding_slots > 0
    expected = masked_diffusion_loss(network, x0, MASK_ID, objective=objective, generator=seeded(7))
    torch.testing.assert_close(loss, expected)


def test_per_sequence_loss_matches_a_hand_computation():
    network = tiny_network()
    x0 = clean_batch(8)
    recorder = Recorder()
    # the same draws, seen by a recorder and by the network
    masked_diffusion_loss(recorder, x0, MASK_ID, normalize="sequence", generator=seeded(8))
    per_sequence = masked_diffusion_loss(network, x0, MASK_ID, normalize="sequence",
                                         reduction="none", generator=seeded(8))
    x_t = recorder.x[0]
    masked = x_t == MASK_ID
    ce = reference.masked_cross_entropy_ref(network(x_t), x0, MASK_ID)
    expected = LENGTH / masked.sum(1) * (ce * masked).sum(1)
    torch.testing.assert_close(per_sequence, expected)


def test_positions_and_full_logits_give_the_same_loss(device):
    network = tiny_network(device=device)
    x0 = clean_batch(8).to(device)

    def loss(denoiser):
        generator = torch.Generator(device).manual_seed(9)
        return masked_diffusion_loss(denoiser, x0, MASK_ID, objective="continuous", generator=generator)

    torch.testing.assert_close(loss(network), loss(Denoiser(network, accepts_positions=False)))


@pytest.mark.parametrize("objective", ["time_agnostic", "continuous"])
def test_gradients_reach_every_parameter(device, objective):
    network = tiny_network(device=device).train()
    x0 = clean_batch(16).to(device)
    masked_diffusion_loss(network, x0, MASK_ID, objective=objective, stratified=True,
                          generator=torch.Generator(device).manual_seed(10)).backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.isfinite().all()), name
        assert bool(parameter.grad.any()), name


def test_float64_network_gives_a_float64_loss():
    network = tiny_network().double()
    loss = masked_diffusion_loss(network, clean_batch(), MASK_ID, generator=seeded(11))
    assert loss.dtype == torch.float64 and loss.dim() == 0


def test_autoregressive_loss_is_next_token_cross_entropy_after_bos():
    torch.manual_seed(0)
    network = Transformer(TransformerConfig.preset("tiny", vocab_size=VOCAB + 1, max_len=LENGTH,
                                                   causal=True))
    x = clean_batch(length=LENGTH)
    inputs = torch.cat([torch.full_like(x[:, :1], MASK_ID), x[:, :-1]], dim=1)
    logits = network(inputs)[..., :VOCAB]  # the mask column is out of the softmax
    expected = F.cross_entropy(logits.flatten(0, 1), x.flatten())
    torch.testing.assert_close(autoregressive_loss(network, x, MASK_ID), expected)
    with pytest.raises(ValueError, match="x"):
        autoregressive_loss(network, x[0], MASK_ID)


def _with_mask(x0: Tensor) -> Tensor:
    x0 = x0.clone()
    x0[1, 2] = MASK_ID
    return x0


@pytest.mark.parametrize("change, error, name", [
    (dict(x0=_with_mask(clean_batch())), ValueError, "x0"),
    (dict(x0=-clean_batch() - 1), ValueError, "x0"),
    (dict(x0=clean_batch().float()), TypeError, "x0"),
    (dict(x0=clean_batch()[0]), ValueError, "x0"),
    (dict(x0=clean_batch()[:0]), ValueError, "x0"),
    (dict(denoiser="network"), TypeError, "denoiser"),
    (dict(denoiser=lambda x: torch.zeros(x.shape[0], VOCAB + 1)), ValueError, "denoiser"),
    (dict(objective="discrete"), ValueError, "objective"),
    (dict(schedule="square"), ValueError, "schedule"),
    (dict(schedule="linear"), ValueError, "ambiguous"),
    (dict(normalize="batch"), ValueError, "normalize"),
    (dict(reduction="sum"), ValueError, "reduction"),
    (dict(denoiser=lambda x: torch.zeros(*x.shape, VOCAB + 1), mask_id=VOCAB + 1), ValueError, "mask_id"),
    (dict(mask_id=-1), ValueError, "mask_id"),
    (dict(mask_id=float(MASK_ID)), TypeError, "mask_id"),
    (dict(mask_id=MASK_ID + 1), ValueError, "mask_id"),  # beyond the ids the network takes
    (dict(x0=clean_batch() + MASK_ID + 1), ValueError, "x0"),  # ids the network does not take
])
def test_bad_arguments_are_named(change, error, name):
    arguments = dict(denoiser=tiny_network(), x0=clean_batch(), mask_id=MASK_ID) | change
    with pytest.raises(error, match=name):
        masked_diffusion_loss(arguments.pop("denoiser"), arguments.pop("x0"), arguments.pop("mask_id"),
                              **arguments)
