"""Masking schedules: alpha_t (probability that a token is still unmasked at time t), its inverse
and its derivative, in one place.

Time runs from t = 1 (everything masked, alpha = 0 or nearly) to t = 0 (clean data, alpha = 1 or
nearly). The names are MDLM's (``noise.type``), whose noise sigma_t (``total_noise``) is
-log alpha_t; one name never means two schedules:

| name | alpha_t | parameters (defaults) |
|---|---|---|
| ``alpha_linear`` | 1 - t (mdm_ext's and LLaDA's "linear") | |
| ``loglinear`` | 1 - (1 - eps) t (sigma_t = -log(1 - (1 - eps) t)) | eps (1e-3) |
| ``sigma_linear`` | e^-sigma_t, sigma_t = sigma_min + t (sigma_max - sigma_min) (MDLM's "linear") | sigma_min (0), sigma_max (10) |
| ``geometric`` | e^-sigma_t, sigma_t = sigma_min^(1 - t) sigma_max^t | sigma_min (1e-3), sigma_max (1) |
| ``cosine`` | eps + (1 - eps) cos(pi t / 2) | eps (1e-3) |
| ``cosinesqr`` | eps + (1 - eps) cos^2(pi t / 2) | eps (1e-3) |

Defaults are those of MDLM's classes (pass your config's values as a :class:`Schedule`). The bare
name "linear" is refused: it means alpha_linear in LLaDA and mdm_ext's past, sigma_linear in MDLM.
Where alpha_0 < 1 (geometric, sigma_linear with sigma_min > 0) a token may still be masked at
t = 0: inverse times are clamped to [0, 1], and samplers finish with a step to clean data.

The compiled first-hit-time kernel (csrc/schedules.h) implements the same formulas; the
reference in ``mdm_ext.reference`` calls these, and the tests hold the two together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional, Union

import torch
from torch import Tensor

# name -> its parameters and their defaults
_PARAMETERS: dict[str, dict[str, float]] = {
    "alpha_linear": {},
    "loglinear": {"eps": 1e-3},
    "sigma_linear": {"sigma_min": 0.0, "sigma_max": 10.0},
    "geometric": {"sigma_min": 1e-3, "sigma_max": 1.0},
    "cosine": {"eps": 1e-3},
    "cosinesqr": {"eps": 1e-3},
}
SCHEDULES = tuple(_PARAMETERS)
AMBIGUOUS = {"linear": "'alpha_linear' (alpha_t = 1 - t, as LLaDA and mdm_ext's former 'linear') or "
                       "'sigma_linear' (MDLM's noise 'linear', alpha_t = exp(-sigma_t) with sigma_t linear in t)"}


@dataclass(frozen=True)
class Schedule:
    """A schedule by name with its parameters (unset ones take the name's defaults)."""

    name: str
    eps: Optional[float] = field(default=None)
    sigma_min: Optional[float] = field(default=None)
    sigma_max: Optional[float] = field(default=None)

    def __post_init__(self) -> None:
        if self.name in AMBIGUOUS:
            raise ValueError(f"schedule {self.name!r} is ambiguous: use {AMBIGUOUS[self.name]}")
        if self.name not in _PARAMETERS:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.name!r}")
        expected = _PARAMETERS[self.name]
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value is not None and f.name not in expected:
                raise ValueError(f"schedule {self.name!r} takes {tuple(expected) or 'no parameters'}, got {f.name}")
            object.__setattr__(self, f.name, float(expected[f.name] if value is None else value)
                               if f.name in expected else None)
        if self.eps is not None and not 0 <= self.eps < 1:
            raise ValueError(f"schedule eps must be in [0, 1), got {self.eps}")
        if self.sigma_min is not None and not (0 <= self.sigma_min < self.sigma_max < math.inf):
            raise ValueError(f"schedule sigmas must satisfy 0 <= sigma_min < sigma_max < inf, got "
                             f"{self.sigma_min}, {self.sigma_max}")
        if self.name == "geometric" and self.sigma_min == 0:
            raise ValueError("schedule 'geometric' needs sigma_min > 0")

    @property
    def parameters(self) -> tuple[float, float]:
        """The two numbers the compiled op takes: (eps, 0) or (sigma_min, sigma_max)."""
        if self.eps is not None:
            return self.eps, 0.0
        if self.sigma_min is not None:
            return self.sigma_min, self.sigma_max
        return 0.0, 0.0


ScheduleArgument = Union[str, Schedule]


def get(schedule: ScheduleArgument) -> Schedule:
    """A :class:`Schedule` from a name or a schedule; ValueError naming ``schedule`` otherwise."""
    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a name or a Schedule, got {type(schedule).__name__}")
    return Schedule(schedule)


def alpha(t: Tensor, schedule: ScheduleArgument) -> Tensor:
    """alpha_t = P(token unmasked at time t), elementwise. t: [...] in [0, 1]."""
    s = get(schedule)
    if s.name == "alpha_linear":
        return 1 - t
    if s.name == "loglinear":
        return 1 - (1 - s.eps) * t
    if s.name in ("sigma_linear", "geometric"):
        return torch.exp(-sigma(t, s))
    cos = torch.cos(t * (math.pi / 2))
    return s.eps + (1 - s.eps) * (cos if s.name == "cosine" else cos * cos)


def sigma(t: Tensor, schedule: ScheduleArgument) -> Tensor:
    """MDLM's total noise sigma_t = -log alpha_t, the input of a sigma-conditioned network."""
    s = get(schedule)
    if s.name == "sigma_linear":
        return s.sigma_min + t * (s.sigma_max - s.sigma_min)
    if s.name == "geometric":
        return torch.exp((1 - t) * math.log(s.sigma_min) + t * math.log(s.sigma_max))
    if s.name == "loglinear":
        return -torch.log1p(-(1 - s.eps) * t)
    return -torch.log(alpha(t, s))


def alpha_inv(a: Tensor, schedule: ScheduleArgument) -> Tensor:
    """The time t in [0, 1] with alpha_t = a, elementwise (clamped where a lies outside
    [alpha_1, alpha_0]). a: [...]."""
    s = get(schedule)
    if s.name == "alpha_linear":
        t = 1 - a
    elif s.name == "loglinear":
        t = (1 - a) / (1 - s.eps)
    elif s.name == "sigma_linear":
        t = (-torch.log(a) - s.sigma_min) / (s.sigma_max - s.sigma_min)
    elif s.name == "geometric":
        t = (torch.log(-torch.log(a)) - math.log(s.sigma_min)) / (math.log(s.sigma_max) - math.log(s.sigma_min))
    else:
        cos = ((a - s.eps) / (1 - s.eps)).clamp(0, 1)
        t = torch.acos(cos if s.name == "cosine" else cos.sqrt()) * (2 / math.pi)
    return t.clamp(0, 1)


def alpha_prime(t: Tensor, schedule: ScheduleArgument) -> Tensor:
    """d alpha_t / dt, elementwise (negative: tokens get masked as t grows)."""
    s = get(schedule)
    if s.name == "alpha_linear":
        return torch.full_like(t, -1.0)
    if s.name == "loglinear":
        return torch.full_like(t, -(1 - s.eps))
    if s.name == "sigma_linear":
        return -(s.sigma_max - s.sigma_min) * alpha(t, s)
    if s.name == "geometric":
        return -sigma(t, s) * (math.log(s.sigma_max) - math.log(s.sigma_min)) * alpha(t, s)
    angle = t * (math.pi / 2)
    return -(1 - s.eps) * (math.pi / 2) * (torch.sin(angle) if s.name == "cosine" else torch.sin(2 * angle))
