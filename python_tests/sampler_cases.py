"""Samplers and networks shared by the sampler tests: every strategy in its modes, the Markov
oracle as a masked denoiser and as a causal model."""
import math

import torch
from torch import Tensor

from mdm_ext import sample
from mdm_ext.language import MarkovLanguage

LANGUAGE = MarkovLanguage.random(12, seed=0)
MASK = LANGUAGE.mask_id

# name -> sampler(denoiser, **options): every masked-model strategy in each of its modes
SAMPLERS = {
    "first_hitting": lambda d, **kw: sample.first_hitting(d, **kw),
    "parallel_3": lambda d, **kw: sample.first_hitting(d, tokens_per_step=3, **kw),
    "second_order": lambda d, **kw: sample.first_hitting(d, tokens_per_step=3, order="second", **kw),
    "predictor_corrector": lambda d, **kw: sample.first_hitting(d, tokens_per_step=3, order="predictor_corrector",
                                                                **kw),
    "ancestral": lambda d, **kw: sample.ancestral(d, steps=30, **kw),
    "ancestral_uncached": lambda d, **kw: sample.ancestral(d, steps=30, cache=False, **kw),
    "ancestral_noise_removal": lambda d, **kw: sample.ancestral(d, steps=8, noise_removal=True, **kw),
    "confidence": lambda d, **kw: sample.confidence(d, steps=8, block_length=4, **kw),
    "confidence_random": lambda d, **kw: sample.confidence(d, steps=8, remasking="random", **kw),
}


class MarkovAR:
    """The language as an autoregressive model over ids 0..K (K = BOS): logits at position i
    are log p(x_{i+1} | x_i)."""

    def __call__(self, x: Tensor, **unused) -> Tensor:
        rows = torch.cat([LANGUAGE.transition, LANGUAGE.stationary[None]]).log()
        return torch.cat([rows[x], torch.full((*x.shape, 1), -math.inf, dtype=rows.dtype)], -1).float()
