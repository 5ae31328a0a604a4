"""Masking schedules: alpha_t (probability that a token is still unmasked at time t), its inverse
and its derivative, in one place.

Time runs from t = 1 (everything masked, alpha = 0 or nearly) to t = 0 (clean data, alpha = 1).
The compiled first-hit-time kernel (csrc/schedules.h) implements the same formulas; the
reference in ``mdm_ext.reference`` calls these, and the tests hold the two together.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "loglinear", "cosine")
# MDLM's log-linear noise sigma(t) = -log(1 - (1 - eps) t) keeps alpha_1 = eps > 0.
LOGLINEAR_EPS = 1e-3


def schedule_id(schedule: str) -> int:
    """Integer code of a schedule name, as the compiled ops take it."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return SCHEDULES.index(schedule)


def alpha(t: torch.Tensor, schedule: str) -> torch.Tensor:
    """alpha_t = P(token unmasked at time t), elementwise. t: [...] in [0, 1]."""
    schedule_id(schedule)
    if schedule == "linear":
        return 1 - t
    if schedule == "loglinear":
        return 1 - (1 - LOGLINEAR_EPS) * t
    return torch.cos(t * (math.pi / 2))


def alpha_inv(a: torch.Tensor, schedule: str) -> torch.Tensor:
    """The time t with alpha_t = a, elementwise. a: [...] in [alpha_1, 1]."""
    schedule_id(schedule)
    if schedule == "linear":
        return 1 - a
    if schedule == "loglinear":
        return (1 - a) / (1 - LOGLINEAR_EPS)
    return torch.acos(a.clamp(-1, 1)) * (2 / math.pi)


def alpha_prime(t: torch.Tensor, schedule: str) -> torch.Tensor:
    """d alpha_t / dt, elementwise (negative: tokens get masked as t grows)."""
    schedule_id(schedule)
    if schedule == "linear":
        return torch.full_like(t, -1.0)
    if schedule == "loglinear":
        return torch.full_like(t, -(1 - LOGLINEAR_EPS))
    return -(math.pi / 2) * torch.sin(t * (math.pi / 2))
