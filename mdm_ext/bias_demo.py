"""The float32 Gumbel-max bias on a realistic next-token distribution, against exact probabilities.

A 50257-token distribution with a few likely tokens and a long tail: 50,241 tokens, each about
e^-17 as likely as the top token, together hold ~0.07% of the mass. Float32 Gumbel noise stops at
16.64, so the legacy recipe can never draw a tail token; float64 noise reaches 36.7 and draws
them at their true rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy import stats

from . import ops

VOCAB = 50257
HEAD = 16  # tokens outside the tail
TAIL_GAP = 17.0  # log-probability gap of tail tokens below the top token
FLOAT32_GUMBEL_MAX = -math.log(-math.log1p(-(2.0**-24)))  # 16.64


@dataclass
class BiasRow:
    method: str
    draws: int
    tail_hits: int
    tail_rate: float
    exact_tail_mass: float
    binomial_p: float
    head_entropy: float  # plug-in entropy of the drawn tokens, nats


def realistic_logits(seed: int = 0) -> torch.Tensor:
    """[V] float32 logits: a Zipf-like head and a long flat tail TAIL_GAP below the top."""
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, HEAD + 1, dtype=torch.float64)
    head = -1.1 * ranks.log()
    tail = -TAIL_GAP + 0.3 * torch.randn(VOCAB - HEAD, generator=generator, dtype=torch.float64)
    logits = torch.cat([head, tail])
    return logits[torch.randperm(VOCAB, generator=generator)].float()


def _plug_in_entropy(samples: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=VOCAB).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def measure(draws: int = 20_000, seed: int = 0) -> list[BiasRow]:
    """Draw `draws` tokens with the float64 kernel and with the legacy float32 recipe."""
    logits = realistic_logits(seed)
    probs = torch.softmax(logits.double(), -1)
    tail = logits < logits.max() - (TAIL_GAP - 3.0)
    tail_mass = float(probs[tail].sum())
    rows = []
    for method, legacy in (("float64 (mdm_ext)", False), ("float32 (legacy)", True)):
        samples = ops.gumbel_argmax(logits.expand(draws, VOCAB), seed=seed, legacy_float32=legacy)
        hits = int(tail[samples].sum())
        test = stats.binomtest(hits, draws, tail_mass)
        rows.append(BiasRow(method, draws, hits, hits / draws, tail_mass, test.pvalue, _plug_in_entropy(samples)))
    return rows


def format_table(rows: list[BiasRow]) -> str:
    lines = [
        "| sampler | draws | tail draws | tail rate | exact tail mass | binomial p-value |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.method} | {r.draws} | {r.tail_hits} | {r.tail_rate:.2e} | "
                     f"{r.exact_tail_mass:.2e} | {r.binomial_p:.2g} |")
    return "\n".join(lines)
