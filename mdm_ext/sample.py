"""Sampling for masked diffusion models: ``import mdm_ext.sample`` is the one import a user's
sampler needs. All categorical draws are float64-accurate (see :func:`mdm_ext.ops.gumbel_argmax`).
"""
from .ops import categorical, gumbel_argmax

__all__ = ["gumbel_argmax", "categorical"]
