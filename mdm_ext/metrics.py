"""Quality and diversity metrics for generated token sequences.

- ``gen_nll``: per-token NLL under the true ``MarkovLanguage`` (exact, no evaluator model needed).
- ``evaluator_nll``: per-token NLL under any autoregressive evaluator (GPT-2 in the paper).
- ``unigram_entropy``: per-sequence token entropy; it drops when a sampler repeats tokens, which
  a low gen NLL alone would reward (arXiv 2409.02908 reports the two together).
- ``unigram_kl``, ``bigram_kl``: how far the pooled token and token-pair frequencies are from
  the language's.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_tokens
from .language import MarkovLanguage


def gen_nll(x: Tensor, language: MarkovLanguage) -> Tensor:
    """Per-token negative log-likelihood under the true language, in nats.

    x: [B, L] ids in [0, K) -> [B] float64, -log p(x) / L. Exact samples average
    ``language.sequence_entropy(L) / L``.
    """
    return -language.log_likelihood(x) / x.shape[1]


def evaluator_nll(
    x: Tensor, model: Callable[[Tensor], Tensor], *, batch_size: int = 32
) -> Tensor:
    """Per-token negative log-likelihood under an autoregressive evaluator, in nats.

    x: [B, L] ids, L >= 2, already on the model's device.
    model: causal, x chunk [b, L] -> logits [b, L, V], logits[:, i] predicting token i + 1. The
    caller puts it in eval mode. The first token has no context and is left out, so the result
    [B] float64 is the mean over tokens 1..L-1 of -log p(x_i | x_<i), computed in float32.
    """
    x = check_tokens(x, "x")
    if x.shape[1] < 2:
        raise ValueError(f"x must have length L >= 2, got {x.shape[1]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk_nll = []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            logits = model(chunk)
            if logits.dim() != 3 or logits.shape[:2] != chunk.shape:
                raise ValueError(
                    f"model must return logits [b, L, V] for x [b, L] = {tuple(chunk.shape)}, "
                    f"got {tuple(logits.shape)}"
                )
            if int(chunk.max()) >= logits.shape[2]:
                raise ValueError(f"x holds ids >= the model's vocabulary size {logits.shape[2]}")
            token_nll = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), chunk[:, 1:], reduction="none"
            )
            chunk_nll.append(token_nll.double().mean(1))
    return torch.cat(chunk_nll)


def unigram_entropy(x: Tensor) -> Tensor:
    """Entropy of each sequence's own token frequencies, in nats.

    x: [B, L] ids -> [B] float64, -sum_v p_v log p_v with p_v = count of v in the row / L.
    Ranges from 0 (one token repeated) to log L (all distinct); independent of the vocabulary.
    """
    x = check_tokens(x, "x")
    batch, length = x.shape
    # Equal ids are adjacent after sorting; numbering the runs gives per-row counts in [B, L]
    # memory, whatever the vocabulary size.
    sorted_x = x.sort(1).values
    starts_run = torch.ones_like(sorted_x, dtype=torch.bool)
    starts_run[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    run_index = starts_run.cumsum(1) - 1
    counts = torch.zeros(batch, length, dtype=torch.float64).scatter_add_(
        1, run_index, torch.ones(batch, length, dtype=torch.float64)
    )
    frequencies = counts / length
    return -torch.special.xlogy(frequencies, frequencies).sum(1)


def _empirical_kl(codes: Tensor, true_probs: Callable[[Tensor], Tensor]) -> float:
    """KL(empirical || true) of pooled outcome codes: [N] int64; true_probs maps distinct codes
    to their true probabilities."""
    observed, counts = torch.unique(codes, return_counts=True)
    frequencies = counts.double() / codes.numel()
    return float((frequencies * (frequencies.log() - true_probs(observed).log())).sum())


def unigram_kl(x: Tensor, language: MarkovLanguage) -> float:
    """KL(empirical || true) in nats between token frequencies pooled over all of x and the
    language's stationary distribution (the marginal of every position).

    x: [B, L] ids in [0, K). This direction sums over observed tokens only, so it stays finite
    when a token never appears. Small samples bias it upwards: for N pooled tokens it is about
    (K - 1) / (2 N_eff) for exact samples (N_eff below N, as neighbouring tokens correlate), so
    compare samplers at equal sample sizes, or against exact samples from ``language.sample``.
    """
    x = check_tokens(x, "x", num_ids=language.vocab_size)
    return _empirical_kl(x.flatten(), lambda tokens: language.stationary[tokens])


def bigram_kl(x: Tensor, language: MarkovLanguage) -> float:
    """KL(empirical || true) in nats between the frequencies of adjacent pairs (x_i, x_{i+1}),
    pooled over all of x, and the language's pair distribution pi(a) P(a, b).

    x: [B, L] ids in [0, K), L >= 2. Finite when a pair never appears; infinite when x holds a
    pair the language cannot produce. Small samples bias it upwards by about (K^2 - 1) / (2 N_eff)
    for N pooled pairs, so with large K it mainly compares samplers at equal sample sizes.
    """
    x = check_tokens(x, "x", num_ids=language.vocab_size)
    if x.shape[1] < 2:
        raise ValueError(f"x must have length L >= 2, got {x.shape[1]}")
    vocab_size = language.vocab_size
    pair_codes = (x[:, :-1] * vocab_size + x[:, 1:]).flatten()

    def pair_probs(codes: Tensor) -> Tensor:
        first, second = codes // vocab_size, codes % vocab_size
        return language.stationary[first] * language.transition[first, second]

    return _empirical_kl(pair_codes, pair_probs)


def summary(x: Tensor, language: MarkovLanguage) -> dict[str, float]:
    """The metrics of x: [B, L] (L >= 2) as floats: means over sequences of gen NLL and unigram
    entropy, the pooled KLs, and ``true_nll``, the gen NLL that exact samples average."""
    nll = gen_nll(x, language)
    length = x.shape[1]
    return {
        "gen_nll": float(nll.mean()),
        "true_nll": language.sequence_entropy(length) / length,
        "unigram_entropy": float(unigram_entropy(x).mean()),
        "unigram_kl": unigram_kl(x, language),
        "bigram_kl": bigram_kl(x, language),
    }
