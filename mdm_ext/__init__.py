"""mdm_ext: fast, float64-accurate sampling and time-agnostic training for masked diffusion models.

Submodules are imported on first use, so pure-PyTorch modules (models, data, the synthetic
language) work before the compiled extension is loaded:

- ``mdm_ext.ops``: the compiled kernels (categorical sampling, masked softmax / cross-entropy,
  first-hit times, masked-position choice).
- ``mdm_ext.reference``: pure-PyTorch references that define what each op computes.
- ``mdm_ext.denoiser``: the interface to a user's network (time-agnostic or time-conditioned).
- ``mdm_ext.sample``: samplers (``import mdm_ext.sample`` is all a user's sampler needs); the
  package behind it, one module per strategy, is ``mdm_ext.sampling``.
- ``mdm_ext.hf``: Hugging Face models and tokenizers, text in and text out.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "ops", "reference", "schedules", "denoiser", "sample", "sampling", "hf", "loss", "models", "dit", "data",
    "train", "language", "metrics", "reproduce", "cli",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
