"""Samplers for masked diffusion models: ``import mdm_ext.sample`` is the one import a user's
sampler needs (the strategies live in :mod:`mdm_ext.sampling`, one module each).

Every sampler takes a denoiser (see :mod:`mdm_ext.denoiser`), a length, the mask id, an
optional ``prefix`` (prompts), a batch size (implied by one prompt per row), its own strategy
arguments and the shared :class:`SamplingOptions`, as an ``options=`` object or as keyword
arguments (``temperature``, ``top_k``, ``top_p``, ``min_p``, ``exclude_ids``, ``eos_id``,
``seed``, ``network_kwargs``, ``callback``, ``return_history``, ...), and returns a
:class:`SampleResult`. All categorical draws go through the float64-accurate kernel
(:func:`mdm_ext.ops.gumbel_argmax`); ``legacy_float32=True`` switches them to the float32
recipe whose truncated Gumbel noise lowers the temperature, for study only. Randomness is
counter-based (Philox): positions, times and tokens come from ``seed`` and a call counter, so
a seed gives the same choices on CPU and CUDA (tokens match where the networks' logits do);
one seed per sequence makes every sequence independent of the batch it is drawn in.

- :func:`ancestral`: the MDLM-style baseline, N time steps, with a per-sequence cache.
- :func:`first_hitting`: the first-hitting sampler, exact for one token per step, parallel for
  more, with optional second-order extrapolation or predictor-corrector steps.
- :func:`confidence`: low-confidence remasking with semi-autoregressive blocks (LLaDA style).
- :func:`autoregressive`: left-to-right sampling of a causal model.
"""
from __future__ import annotations

from .ops import categorical, gumbel_argmax
from .sampling import SampleResult, SamplingOptions, ancestral, autoregressive, confidence, first_hitting

__all__ = [
    "SampleResult", "SamplingOptions", "ancestral", "first_hitting", "confidence", "autoregressive",
    "gumbel_argmax", "categorical",
]
