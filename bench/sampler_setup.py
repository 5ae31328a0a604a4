"""The samplers timed by the CPU suite (bench/test_bench_samplers.py): one registry."""
from __future__ import annotations

from typing import Callable

from mdm_ext import sample


def samplers(length: int, ancestral_steps: tuple[int, ...]) -> dict[str, Callable]:
    """name -> sampler(denoiser, batch_size, mask_id, seed) -> SampleResult, the cached
    ancestral baseline(s) first."""
    table: dict[str, Callable] = {
        f"ancestral_N{steps}": (lambda steps: lambda d, **kw: sample.ancestral(d, steps=steps, length=length, **kw))(steps)
        for steps in ancestral_steps
    }
    table.update({
        "first_hitting": lambda d, **kw: sample.first_hitting(d, length=length, **kw),
        "first_hitting_k4": lambda d, **kw: sample.first_hitting(d, length=length, tokens_per_step=4, **kw),
        "first_hitting_k4_order2": lambda d, **kw: sample.first_hitting(d, length=length, tokens_per_step=4,
                                                                        order=2, **kw),
        "first_hitting_k4_pc": lambda d, **kw: sample.first_hitting(d, length=length, tokens_per_step=4,
                                                                    order="pc", **kw),
        "confidence_L/4": lambda d, **kw: sample.confidence(d, length=length, steps=length // 4, **kw),
    })
    return table
