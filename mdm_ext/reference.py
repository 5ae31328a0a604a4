"""Pure-PyTorch references: the specification of every op in :mod:`mdm_ext.ops`.

The deterministic ops (masked log-softmax, masked cross-entropy) match their reference value
for value, gradients included (autograd through the reference is the reference gradient). The
random ops draw their own counter-based noise, so their references come in two kinds: exact
distributions that sampled frequencies are tested against (``sampling_probs``,
``legacy_float32_probs``), and plain samplers written the textbook way, which take the
randomness from a ``torch.Generator`` or as an argument (``first_hit_times_ref``,
``choose_masked_ref``).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import schedules

# torch.rand in float32 draws the multiples of 2^-24 in [0, 1), as does the legacy kernel path.
FLOAT32_UNIFORM_GRID = 2**24


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _column_is(scores: Tensor, token: Optional[int]) -> Tensor:
    """[V] bool, True in column ``token`` (nowhere when None)."""
    columns = torch.arange(scores.shape[-1], device=scores.device)
    return columns == (-1 if token is None else token)


def _tempered(scores: Tensor, temperature: float) -> Tensor:
    """(scores - row max) / temperature, float64: shifted before scaling, so that no finite logit
    overflows (scores / temperature does near 1.8e308, or for temperatures near 0) and tied
    maxima stay exactly 0 at every temperature > 0, as in the kernels (csrc/categorical.h)."""
    return (scores - scores.amax(-1, keepdim=True)) / temperature


def sampling_probs(logits: Tensor, temperature: float = 1.0, exclude: Optional[int] = None) -> Tensor:
    """The distribution ``ops.gumbel_argmax`` draws from, exactly.

    logits: [..., V] any float dtype -> float64 [..., V]: softmax(logits.double() / temperature)
    with column ``exclude`` at probability 0; temperature 0 gives the one-hot of the first argmax.
    As the temperature falls to 0 it tends to the uniform distribution over the tied maxima (not
    to the first argmax of temperature 0). For ``ops.categorical(probs)`` the distribution is
    ``sampling_probs(probs.double().log())``.
    """
    scores = logits.double().masked_fill(_column_is(logits, exclude), -math.inf)
    if temperature == 0:
        return F.one_hot(scores.argmax(-1), scores.shape[-1]).double()
    return _tempered(scores, temperature).softmax(-1)


def gumbel_argmax_ref(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    exclude: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Float64 Gumbel-max: ``argmax(logits.double() / T - log(-log u))``, u ~ U[0, 1) float64,
    with the logits shifted by their row maximum before scaling (the same argmax, but exact
    where logits / T would overflow).

    logits: [..., V] -> int64 [...]. Temperature 0 gives the argmax (first index among ties);
    column ``exclude`` is never drawn.
    """
    scores = logits.double().masked_fill(_column_is(logits, exclude), -math.inf)
    if temperature == 0:
        return scores.argmax(-1)
    u = torch.rand(scores.shape, dtype=torch.float64, generator=generator, device=scores.device)
    return (_tempered(scores, temperature) - (-u.log()).log()).argmax(-1)


def categorical_ref(probs: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """Float64 Gumbel-max over probabilities: ``argmax(log p + Gumbel)``.

    probs: [..., V] non-negative, unnormalised -> int64 [...]; zeros are never drawn.
    """
    p = probs.double()
    u = torch.rand(p.shape, dtype=torch.float64, generator=generator, device=p.device)
    return (p.log() - (-u.log()).log()).argmax(-1)


def legacy_float32_ref(probs: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """The float32 recipe common in MDM codebases, verbatim, which ``legacy_float32=True`` follows.

    probs: [..., V] -> int64 [...]. Its 24-bit uniforms cap the implied Gumbel noise at 16.64, so
    it under-draws unlikely tokens; ``legacy_float32_probs`` gives its exact distribution.
    """
    probs_f32 = probs.float()
    u = torch.rand(probs_f32.shape, generator=generator, device=probs_f32.device)
    gumbel_norm = 1e-10 - (u + 1e-10).log()
    return (probs_f32 / gumbel_norm).argmax(-1)


def _legacy_denominators() -> Tensor:
    """``1e-10 - log(u + 1e-10)`` in float32 over the whole uniform grid, as float64 [2^24],
    strictly decreasing in u (a token's score p / e(u) rises with its uniform)."""
    u = torch.arange(FLOAT32_UNIFORM_GRID, dtype=torch.float32) / FLOAT32_UNIFORM_GRID
    denominators = (1e-10 - (u + 1e-10).log()).double()
    # legacy_float32_probs counts on distinct scores; a float32 log that rounded two grid points
    # to one value would make it inexact, so refuse rather than answer slightly wrong.
    if not bool((denominators[1:] < denominators[:-1]).all()):
        raise RuntimeError("this platform's float32 log is not strictly monotone on the uniform grid")
    return denominators


def _count_above(descending: Tensor, ascending: Tensor, thresholds: Tensor) -> Tensor:
    """#{j: descending[j] > t} for each of the decreasing thresholds t [N], int64 [N]. Binary
    searches run only where t falls inside the grid's range: above it the count is 0, below it N."""
    grid = len(descending)
    first_positive = int((thresholds >= descending[0]).sum())
    first_full = int((thresholds >= descending[-1]).sum())
    counts = torch.full(thresholds.shape, grid, dtype=torch.int64)
    counts[:first_positive] = 0
    searched = thresholds[first_positive:first_full]
    counts[first_positive:first_full] = grid - torch.searchsorted(ascending, searched, right=True)
    return counts


def legacy_float32_probs(probs: Tensor) -> Tensor:
    """The exact distribution of ``legacy_float32_ref`` for one probability vector.

    probs: [V] non-negative (rounded to float32 as the recipe does) -> float64 [V].

    arXiv 2409.02908 (Prop. 5.2) models the recipe as Gumbel-max with a continuous Gumbel
    truncated at 16.64; this computes the discrete distribution itself. Token i with uniform u_i
    scores s_i = p_i / e(u_i), e(u) = 1e-10 - log(u + 1e-10), and u runs over the N = 2^24 grid
    points. Tokens of equal probability form a class c of m_c tokens whose best score is the k-th
    grid score s_c(k) with probability ((k+1)/N)^m_c - (k/N)^m_c (e is strictly decreasing on the
    grid); a token of another class d stays below it with probability #{u: e(u) > e_k p_d / p_c} / N.
    Hence P(class c) = sum_k [((k+1)/N)^m_c - (k/N)^m_c] prod_{d != c} (#{...} / N)^m_d, shared
    equally by its tokens. Exact up to float32 ties between scores of unequal probabilities
    (argmax then takes the first index), whose effect is of relative order 2^-24.
    The class of the largest total mass gets what the others leave (its own sums would span the
    whole grid: its rivals are all less likely).
    Cost: up to one 2^24-point search per pair of distinct probability values (less for very
    unequal ones), the largest class's pairs excepted.
    """
    p = probs.detach().cpu().float().double()
    if p.dim() != 1 or not bool((p >= 0).all()) or not bool((p > 0).any()):
        raise ValueError("probs must be a [V] vector of non-negative values, not all zero")
    values, class_of = torch.unique(p, return_inverse=True)
    sizes = torch.bincount(class_of, minlength=len(values))
    denominators = _legacy_denominators()
    ascending = denominators.flip(0).contiguous()
    grid = FLOAT32_UNIFORM_GRID
    class_mass = torch.zeros(len(values), dtype=torch.float64)
    largest = int((values * sizes).argmax())
    for c in range(len(values)):
        if values[c] == 0 or c == largest:
            continue
        rivals = [d for d in range(len(values)) if d != c and values[d] > 0]
        ratios = [float(values[d] / values[c]) for d in rivals]
        # Grid points whose score the likeliest rival can never fall below add nothing: skip them.
        start = int((denominators * max(ratios, default=0.0) >= denominators[0]).sum())
        grid_cdf = torch.arange(start, grid + 1, dtype=torch.float64) / grid  # P(u < k / N)
        weight = grid_cdf[1:].pow(int(sizes[c])) - grid_cdf[:-1].pow(int(sizes[c]))
        for d, ratio in zip(rivals, ratios):
            below = _count_above(denominators, ascending, denominators[start:] * ratio)
            weight *= (below.double() / grid).pow(int(sizes[d]))
        class_mass[c] = weight.sum()
    class_mass[largest] = 1 - class_mass.sum()
    return class_mass[class_of] / sizes[class_of]


def masked_log_softmax_ref(logits: Tensor, mask_id: int) -> Tensor:
    """log softmax over the last dim without column ``mask_id``, which is -inf.

    logits: [..., V] -> [..., V] in the dtype of logits, computed in float32 (float64 for
    float64 logits). A row whose other logits are all -inf gives NaN there, as log_softmax does.
    """
    is_mask = _column_is(logits, mask_id)
    log_probs = logits.to(_acc_dtype(logits.dtype)).masked_fill(is_mask, -math.inf).log_softmax(-1)
    return log_probs.masked_fill(is_mask, -math.inf).to(logits.dtype)


def masked_cross_entropy_ref(
    logits: Tensor,
    target: Tensor,
    mask_id: int,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
) -> Tensor:
    """Per-position ``-weight * log p(target)`` under the masked softmax, 0 where ignored.

    logits: [..., V]; target: [...] int64; weight: broadcastable to [...], not differentiated.
    Returns [...] float32 (float64 for float64 logits).
    """
    is_mask = _column_is(logits, mask_id)
    acc = _acc_dtype(logits.dtype)
    log_probs = logits.to(acc).masked_fill(is_mask, -math.inf).log_softmax(-1)
    ignored = target == ignore_index
    picked = log_probs.gather(-1, target.masked_fill(ignored, 0).unsqueeze(-1)).squeeze(-1)
    loss = torch.where(ignored, 0.0, -picked)
    return loss if weight is None else loss * weight.detach().to(acc)


def first_hit_times_ref(t: Tensor, n_masked: Tensor, u: Tensor, schedule: str) -> Tensor:
    """Next unmask times given the uniforms: alpha^-1(1 - u^{1/n} (1 - alpha_t)), in float64.

    t: [B] times, n_masked: [B] counts, u: [B] in [0, 1) -> [B] in the dtype of t; rows with
    n_masked = 0 keep t. With u ~ U[0, 1) this is the time at which the first of n masked tokens,
    each unmasked at an independent time distributed by the schedule, gets unmasked.
    """
    t64 = t.double()
    u_root = u.double().pow(1 / n_masked.double().clamp(min=1))
    next_time = schedules.alpha_inv(1 - u_root * (1 - schedules.alpha(t64, schedule)), schedule)
    return torch.where(n_masked > 0, next_time, t64).to(t.dtype)


def choose_masked_ref(x: Tensor, mask_id: int, k: Union[int, Tensor], keys: Tensor) -> Tensor:
    """The k masked positions (x == mask_id) of each row with the smallest keys.

    x: [B, L] tokens; k: an int or [B] counts; keys: [B, L] distinct finite floats, e.g.
    torch.rand, so that the choice is a uniformly random k-subset of the masked positions.
    Returns bool [B, L]; a row with fewer than k masked positions gets all of them.
    """
    masked = x == mask_id
    counts = torch.as_tensor(k, device=x.device).expand(x.shape[0])
    ranks = keys.double().masked_fill(~masked, math.inf).argsort(dim=-1, stable=True).argsort(dim=-1)
    return masked & (ranks < counts[:, None])
