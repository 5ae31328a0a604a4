"""Quality and diversity metrics for generated token sequences.

- ``gen_nll``: per-token NLL under the true ``MarkovLanguage`` (exact, no evaluator model needed).
- ``evaluator_nll``: per-token NLL under any autoregressive evaluator (GPT-2 in the paper).
- ``gen_perplexity``: the paper's metric on text: generative perplexity under a Hugging Face
  causal LM (GPT-2 Large in arXiv 2409.02908), with each sample's unigram entropy beside it.
- ``unigram_entropy``: per-sequence token entropy; it drops when a sampler repeats tokens, which
  a low gen NLL alone would reward (arXiv 2409.02908 reports the two together).
- ``unigram_kl``, ``bigram_kl``: how far the pooled token and token-pair frequencies are from
  the language's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_tokens, integer
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


EOS_RULES = ("first", "mdlm")


@dataclass
class GenPerplexity:
    """What :func:`gen_perplexity` measures on N texts.

    perplexity: exp(nll). nll: mean -log p of every scored token, pooled over the texts (each
    token counts once, as MDLM's metric pools them), in nats. sample_nll: [N] float64, each
    text's own mean (NaN for a text with nothing scored). scored_tokens: [N] int64.
    unigram_entropy: [N] float64, the entropy of each text's evaluator tokens (all of them,
    scored or not); ``entropy`` is its mean. A low perplexity is only meaningful beside it: a
    sampler that repeats tokens lowers both (arXiv 2409.02908).
    """

    perplexity: float
    nll: float
    sample_nll: Tensor
    scored_tokens: Tensor
    unigram_entropy: Tensor

    @property
    def entropy(self) -> float:
        return float(self.unigram_entropy.mean())


def load_evaluator(name_or_path: str, *, device: Union[str, torch.device] = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a Hugging Face causal LM: a hub name such as ``"gpt2-large"`` (the
    paper's evaluator; downloaded or read from the local cache) or a local folder written by
    ``save_pretrained``. The model is in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
    return model, tokenizer


def gen_perplexity(
    texts: Sequence[str], model: Callable[..., Any], tokenizer: Any, *, batch_size: int,
    context: Optional[int] = None, max_length: Optional[int] = None, add_bos: bool = False,
    eos_rule: str = "first",
) -> GenPerplexity:
    """Generative perplexity of ``texts`` under a causal LM, with each text's unigram entropy.

    The protocol of MDLM's evaluation: each text is retokenised by the evaluator's own
    ``tokenizer`` (no special tokens added; ``add_bos`` puts ``tokenizer.bos_token_id`` in front
    as context), truncated to ``max_length`` tokens when given, and cut into chunks of
    ``context`` tokens (default: the model's ``n_positions`` or ``max_position_embeddings``).
    Each chunk is scored on its own: every token after the chunk's first, by the logits of the
    token before it. EOS (``tokenizer.eos_token_id``) ends what is scored:

    - ``eos_rule="first"``: the first EOS after a text's first token is scored (the evaluator
      predicts that the text ends) and nothing after it;
    - ``eos_rule="mdlm"``: MDLM's ``compute_generative_perplexity`` mask, per chunk: every
      non-EOS token is scored, and of the EOS tokens only the chunk's first. Samples of models
      trained on packed documents hold several EOS; this rule scores the text between them.

    model: a transformers causal LM (or any callable taking ``input_ids`` and
        ``attention_mask`` [b, n] and returning logits [b, n, V] or an output with ``.logits``),
        in eval mode; inputs go to its device. Chunks are right-padded in batches of
        ``batch_size``, so padding never changes a score. Log-probabilities in float32.
    """
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("texts must be a sequence of str")
    if len(texts) == 0:
        raise ValueError("texts must hold at least one text")
    batch_size = integer("batch_size", batch_size, minimum=1)
    if eos_rule not in EOS_RULES:
        raise ValueError(f"eos_rule must be one of {EOS_RULES}, got {eos_rule!r}")
    if context is None:
        config = getattr(model, "config", None)
        context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if context is None:
            raise ValueError("context must be given: the model declares no n_positions or "
                             "max_position_embeddings")
    context = integer("context", context, minimum=2)
    if max_length is not None:
        max_length = integer("max_length", max_length, minimum=1)
    eos = tokenizer.eos_token_id
    if add_bos and tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True needs a tokenizer with a bos_token_id")

    samples = [ids[:max_length] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    entropy = torch.cat([unigram_entropy(torch.tensor([ids])) if ids else torch.full((1,), math.nan,
                                                                                      dtype=torch.float64)
                         for ids in samples])
    # (text index, chunk ids, which of its targets are scored)
    chunks: list[tuple[int, list[int], list[bool]]] = []
    for index, ids in enumerate(samples):
        ids = ([tokenizer.bos_token_id] if add_bos else []) + ids
        scored = _scored(ids, eos, eos_rule, context)
        chunks += [(index, ids[start:start + context], scored[start + 1:start + context])
                   for start in range(0, len(ids) - 1, context)]
    nll_sum = torch.zeros(len(texts), dtype=torch.float64)
    counts = torch.zeros(len(texts), dtype=torch.int64)
    device = _device_of(model)
    with torch.no_grad():
        for first in range(0, len(chunks), batch_size):
            batch = chunks[first:first + batch_size]
            width = max(len(piece) for _, piece, _ in batch)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
            input_ids = torch.tensor([piece + [pad] * (width - len(piece)) for _, piece, _ in batch])
            attention = torch.tensor([[1] * len(piece) + [0] * (width - len(piece)) for _, piece, _ in batch])
            scored = torch.tensor([flags + [False] * (width - 1 - len(flags)) for _, _, flags in batch])
            output = model(input_ids=input_ids.to(device), attention_mask=attention.to(device))
            logits = output.logits if hasattr(output, "logits") else output
            if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
                raise ValueError(f"model must return logits [b, n, V] for input_ids {tuple(input_ids.shape)}")
            token_nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:].to(device),
                                        reduction="none").double().cpu()
            rows = torch.tensor([index for index, _, _ in batch])
            nll_sum.index_add_(0, rows, (token_nll * scored).sum(1))
            counts.index_add_(0, rows, scored.sum(1))
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no token of texts is scored: every text is shorter than 2 evaluator tokens")
    nll = float(nll_sum.sum()) / total
    sample_nll = torch.where(counts > 0, nll_sum / counts.clamp(min=1), math.nan)
    return GenPerplexity(perplexity=math.exp(nll), nll=nll, sample_nll=sample_nll, scored_tokens=counts,
                         unigram_entropy=entropy)


def _scored(ids: list[int], eos: Optional[int], rule: str, context: int) -> list[bool]:
    """Whether each token of ``ids`` is scored, given that the first of each chunk of ``context``
    tokens never is (it has no context in its chunk)."""
    scored = [position % context != 0 for position in range(len(ids))]
    if eos is None:
        return scored
    if rule == "first":
        end = next((position for position in range(1, len(ids)) if ids[position] == eos), len(ids))
        return [flag and position <= end for position, flag in enumerate(scored)]
    # "mdlm": EOS tokens count only as the first of their chunk
    first_eos = {}
    for position, token in enumerate(ids):
        if token == eos:
            first_eos.setdefault(position // context, position)
    return [flag and (token != eos or first_eos[position // context] == position)
            for position, (flag, token) in enumerate(zip(scored, ids))]


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


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
