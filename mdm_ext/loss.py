"""Training losses: the masked diffusion ELBO, in its time-agnostic and continuous-time forms, and
the next-token loss of the autoregressive baseline.

For a clean sequence x0 of L tokens, the continuous-time negative ELBO of a masked diffusion model
whose network ignores time is (paper, Prop. 3.1)

    NELBO(x0) = int_0^1 -alpha'_t / (1 - alpha_t) E[sum over masked i of -log p(x0_i | x_t)] dt
              = E_{n ~ U{1..L}} (L / n) E[sum over the n masked i of -log p(x0_i | x_n)],

where x_n masks exactly n positions chosen uniformly: given n masked tokens, the time weight
integrates to 1 / n for every schedule with alpha_0 = 1 and alpha_1 = 0 ("alpha_linear",
``Schedule("cosine", eps=0)``; MDLM's "loglinear" and "cosine" keep alpha_1 = eps = 1e-3, a gap of
that order). The time-agnostic form
masks exactly n tokens and needs no time at all; the continuous-time form draws t and masks each
token independently. Both estimate the same number, the time-agnostic one with lower variance
(the continuous one's 1 / t weight has an unbounded second moment under the linear schedule).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from . import ops, schedules
from .denoiser import Denoiser
from . import checks
from .checks import check_tokens

OBJECTIVES = ("time_agnostic", "continuous")
# "token": NELBO / L, nats per token, comparable with an autoregressive model's cross-entropy;
# "sequence": the NELBO itself, nats per sequence.
NORMALIZATIONS = ("token", "sequence")
IGNORE_INDEX = -100


def masked_diffusion_loss(
    denoiser: Union[Denoiser, Callable[..., Tensor]],
    x0: Tensor,
    mask_id: int,
    *,
    objective: str = "time_agnostic",
    schedule: schedules.ScheduleArgument = "alpha_linear",
    normalize: str = "token",
    stratified: bool = False,
    reduction: str = "mean",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """A one-sample Monte Carlo estimate of the negative ELBO of each sequence of x0.

    Args:
        denoiser: a :class:`Denoiser` or any callable it accepts; called once, on the masked
            batch, for logits at the masked positions only (``positions=``: networks with
            ``accepts_positions`` compute nothing else).
        x0: [B, L] clean token ids, >= 0 and != mask_id.
        mask_id: the mask token, a column of the logits; it is excluded from the softmax.
        objective: "time_agnostic": n ~ U{1..L} per sequence, exactly n positions masked
            uniformly, masked cross-entropies weighted by 1 / n. "continuous": t ~ U(0, 1] per
            sequence, each token masked with probability 1 - alpha_t, weighted by
            -alpha'_t / (1 - alpha_t). Both have the same expectation (module docstring).
        schedule: alpha_t of :mod:`mdm_ext.schedules`. It sets the masking of "continuous" and,
            for either objective, the time given to a time-conditioned denoiser (``needs_time``):
            "time_agnostic" passes t = alpha^-1(1 - n / L), the time at which n of L tokens are
            masked in expectation (t = n / L under "alpha_linear"), capped at 1.
        normalize: "token" (default): NELBO / L in nats per token; "sequence": NELBO in nats.
        stratified: draw the batch's noise levels s_b = (pi(b) + u) / B with one u ~ U[0, 1) and
            a random permutation pi, one per stratum of [0, 1), instead of independently: each
            sequence's level stays uniform (the estimate stays unbiased) and the batch covers
            all noise levels evenly, which lowers the variance of the batch mean.
        reduction: "mean" over the batch (a scalar) or "none" ([B], one estimate per sequence).
        generator: source of the noise levels and masks; torch's default generator when None.
            It must live on x0's device.

    Returns a float32 scalar or [B] (float64 for float64 logits), differentiable in the
    denoiser's parameters.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
    denoiser = Denoiser(denoiser)
    mask_id = checks.mask_id(mask_id, denoiser.num_ids)
    x0 = check_tokens(x0, "x0", num_ids=denoiser.num_ids)
    if x0.shape[0] == 0:
        raise ValueError("x0 must hold at least one sequence, got shape (0, L)")
    if bool(((x0 < 0) | (x0 == mask_id)).any()):
        raise ValueError(f"x0 must hold token ids >= 0 other than mask_id = {mask_id}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    schedules.get(schedule)
    batch, length = x0.shape
    device = x0.device

    # float64 levels: n = floor(s L) + 1 is then uniform on 1..L for any L that fits in memory
    if stratified:
        strata = torch.randperm(batch, generator=generator, device=device)
        offset = torch.rand((), generator=generator, device=device, dtype=torch.float64)
        level = (strata + offset) / batch
    else:
        level = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)

    if objective == "time_agnostic":
        n_masked = (level * length).long().clamp(max=length - 1) + 1
        # float64 keys: ties among L float32 keys are common at L ~ 1000 and would bias the choice
        keys = torch.rand(batch, length, generator=generator, device=device, dtype=torch.float64)
        masked = keys.argsort(dim=1).argsort(dim=1) < n_masked[:, None]
        t = schedules.alpha_inv(1 - n_masked / length, schedule).clamp(max=1)
        weight = length / n_masked
    else:
        t = 1 - level  # in (0, 1]: t = 0 would give an infinite weight on nothing masked
        unmasked_prob = schedules.alpha(t, schedule)
        masked = torch.rand(batch, length, generator=generator, device=device,
                            dtype=torch.float64) >= unmasked_prob[:, None]
        weight = -schedules.alpha_prime(t, schedule) / (1 - unmasked_prob)

    nll = _masked_nll(denoiser, x0, masked, t.float(), mask_id)
    if normalize == "token":
        weight = weight / length
    per_sequence = weight.to(nll.dtype) * nll
    return per_sequence.mean() if reduction == "mean" else per_sequence


def _masked_nll(denoiser: Denoiser, x0: Tensor, masked: Tensor, t: Tensor, mask_id: int) -> Tensor:
    """sum over the masked positions of -log p(x0_i | x_t): [B], float32 (float64 logits: float64).

    The masked positions of each row come first in ``positions``: [B, max_n]; rows with fewer
    fill the rest with unmasked positions whose target is IGNORE_INDEX, so they cost a little
    compute and carry no loss.
    """
    x_t = x0.masked_fill(masked, mask_id)
    n_masked = masked.sum(dim=1)
    max_n = max(int(n_masked.max()), 1)
    positions = (~masked).to(torch.uint8).argsort(dim=1, stable=True)[:, :max_n]
    is_masked_slot = torch.arange(max_n, device=x0.device) < n_masked[:, None]
    target = x0.gather(1, positions).masked_fill(~is_masked_slot, IGNORE_INDEX)
    logits = denoiser(x_t, t=t, positions=positions)
    nll = ops.masked_cross_entropy(logits, target, mask_id, ignore_index=IGNORE_INDEX)
    return nll.sum(dim=1)


def autoregressive_loss(model: Callable[[Tensor], Tensor], x: Tensor, mask_id: int) -> Tensor:
    """Next-token cross-entropy of a causal model in nats per token, the baseline's counterpart of
    ``normalize="token"``: a float32 scalar.

    x: [B, L] token ids. The model reads ``[mask_id, x_1 .. x_{L-1}]``: the mask id doubles as the
    beginning-of-sequence token, so all L tokens are predicted (the first from its marginal), as
    the masked model predicts them, and ``sample.autoregressive(..., bos_id=mask_id)`` feeds the
    same input. The baseline shares the masked model's vocabulary, so ``mask_id`` (never a target)
    is left out of its softmax and both families have the same parameters.
    """
    x = check_tokens(x, "x")
    bos = torch.full_like(x[:, :1], mask_id)
    return ops.masked_cross_entropy(model(torch.cat([bos, x[:, :-1]], dim=1)), x, mask_id,
                                    reduction="mean")
