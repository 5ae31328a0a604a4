"""The float32 Gumbel recipe's bias, in two models and as a temperature.

The recipe (``reference.legacy_float32_ref``) draws ``argmax p / (1e-10 - log u)`` with float32
uniforms u on the grid k / 2^24; in Gumbel terms, argmax of log p + g with g = -log(-log u),
capped at FLOAT32_GUMBEL_CAP = -log(-log(1 - 2^-24)) = 16.64 (float64 uniforms: 36.7).

- ``reference.legacy_float32_probs``: the exact law of the recipe, its 24-bit uniforms included;
- :func:`truncated_gumbel_probs`: the paper's model of it (arXiv 2409.02908, Prop. 5.2):
  Gumbel-max with a continuous Gumbel truncated at the cap, in closed form;
- :func:`effective_temperature`: the temperature T at which exact sampling of
  softmax(log p / T) matches a law in entropy or in the mass of a set of tokens (the tail):
  the paper's explanation of the bias is that the cap lowers the effective temperature.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from scipy import optimize
from torch import Tensor

FLOAT32_GUMBEL_CAP = -math.log(-math.log1p(-2.0**-24))
TEMPERATURE_RANGE = (1e-3, 1e3)


def truncated_gumbel_probs(probs: Tensor, cap: float = FLOAT32_GUMBEL_CAP) -> Tensor:
    """The law of argmax_i log p_i + g_i, g_i independent Gumbel(0, 1) conditioned on g_i <= cap.

    probs: [V] non-negative, not all zero (normalised here) -> float64 [V]; cap = inf gives probs.
    Tokens of equal probability form classes. With A = e^-cap, the best of the m_c tokens of
    class c has e^-g = A + y with y ~ Exp(m_c), and a token of probability p_d stays below it
    with probability exp(min(0, A - (A + y) p_d / p_c)); so
        P(class c) = int_0^inf m_c e^{-m_c y} exp(sum_d m_d min(0, A - (A + y) r_d)) dy,
    r_d = p_d / p_c over the other tokens, an exponential of a piecewise linear function of y,
    integrated piece by piece in closed form (pieces start where A - (A + y) r_d turns negative).
    Cost: O(C^2 log C) for C distinct probabilities.
    """
    p = probs.detach().cpu().double()
    if p.dim() != 1 or not bool((p >= 0).all()) or not bool((p > 0).any()):
        raise ValueError("probs must be a [V] vector of non-negative values, not all zero")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    values, class_of = torch.unique(p / p.sum(), return_inverse=True)
    sizes = torch.bincount(class_of, minlength=len(values)).double()
    a = math.exp(-cap)
    class_mass = torch.zeros(len(values), dtype=torch.float64)
    for c in (values > 0).nonzero().flatten().tolist():
        rival = values > 0
        rival[c] = False  # the best of the class is above its other tokens by definition
        ratio, count = values[rival] / values[c], sizes[rival]
        # rival d joins the exponent at y_d = A (1 - r_d) / r_d (from the start when r_d >= 1)
        joins = (a * (1 - ratio) / ratio).clamp(min=0)
        order = joins.argsort()
        joins, ratio, count = joins[order], ratio[order], count[order]
        starts = torch.cat([torch.zeros(1, dtype=torch.float64), joins])
        ends = torch.cat([joins, torch.full((1,), math.inf, dtype=torch.float64)])
        # on the piece after k rivals joined: exponent alpha_k - beta_k y
        beta = sizes[c] + torch.cat([torch.zeros(1, dtype=torch.float64), (count * ratio).cumsum(0)])
        alpha = torch.cat([torch.zeros(1, dtype=torch.float64), (count * a * (1 - ratio)).cumsum(0)])
        piece = torch.exp(alpha - beta * starts) * -torch.expm1(-beta * (ends - starts)) / beta
        class_mass[c] = sizes[c] * piece[ends > starts].sum()
    return (class_mass / sizes)[class_of]


def tempered(probs: Tensor, temperature: float) -> Tensor:
    """softmax(log probs / temperature) in float64: probs: [V] -> [V]."""
    log_probs = probs.double().log() / temperature
    return (log_probs - log_probs.logsumexp(0)).exp()


def _entropy(probs: Tensor) -> float:
    return float(-torch.special.xlogy(probs, probs).sum())


def effective_temperature(probs: Tensor, law: Tensor, *, by: str, tail: Optional[Tensor] = None) -> float:
    """The temperature T at which exact sampling of softmax(log probs / T) matches ``law``.

    probs, law: [V] probabilities (law: what a sampler of probs draws, e.g. the exact float32
    law). by="entropy": equal entropies; by="tail": equal mass on the tokens of ``tail``
    ([V] bool), tokens less likely than the others so that their tempered mass rises with T.
    Returns a float in TEMPERATURE_RANGE; NaN when no temperature there matches.
    """
    probs, law = probs.double().cpu(), law.double().cpu()
    if probs.shape != law.shape or probs.dim() != 1:
        raise ValueError(f"probs and law must be [V] vectors of one shape, got {tuple(probs.shape)} "
                         f"and {tuple(law.shape)}")
    if by == "entropy":
        target = _entropy(law)

        def gap(log_t: float) -> float:
            return _entropy(tempered(probs, math.exp(log_t))) - target
    elif by == "tail":
        if tail is None or tail.shape != probs.shape or tail.dtype != torch.bool:
            raise ValueError("tail must be a [V] bool tensor with by='tail'")
        tail = tail.cpu()
        target = float(law[tail].sum())

        def gap(log_t: float) -> float:
            return float(tempered(probs, math.exp(log_t))[tail].sum()) - target
    else:
        raise ValueError(f"by must be 'entropy' or 'tail', got {by!r}")
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    if gap(low) * gap(high) > 0:
        return math.nan
    return math.exp(optimize.brentq(gap, low, high, xtol=1e-10))
