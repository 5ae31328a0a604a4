"""Token shaping: what turns a network's logits into the distribution a token is drawn from.

Each processor is one small class, ``processor(scores, sites) -> scores``, in the spirit of
transformers' ``LogitsProcessor``: scores [..., V] (the working copy of the logits, float32 or
float64; a processor may change it in place and return it), sites the :class:`Sites` of the
draws. :class:`TokenShaping` composes them in a fixed order:

1. masks: :class:`ExcludeTokens` (the mask id always, plus ``exclude_ids``) and
   :class:`SuppressEos` (no EOS before ``min_new_tokens``): entries set to -inf;
2. :class:`Temperature` (0: all mass on the argmax);
3. filters: :class:`TopK`, :class:`TopP`, :class:`MinP`, then the user's own processors;
4. a log-softmax: normalised log-probabilities.

The fused path: masks commute with the temperature, so when no filter is active the kernel
draws from the logits with the temperature (and one excluded id) itself, and nothing of size
[..., V] is written (one masked copy when several ids are excluded); filters are inactive at
temperature 0, where the argmax is kept by all of them.
"""
from __future__ import annotations

import math
from typing import Optional, Protocol, Sequence

import torch
from torch import Tensor

from .. import checks


class Sites:
    """Where the draws of one call sit, each a tensor of the scores' leading shape [...]:
    ``positions`` (in the sequence), ``sequences`` (the sequence's index in the batch) and
    ``new_positions`` (counted from the sequence's first generated position); the last two are
    computed when asked for.

    rows: the sequences of the leading dim (None: all B in order), or one per site."""

    def __init__(self, positions: Tensor, rows: Optional[Tensor], first_generated: Tensor):
        self.positions, self._rows, self._first_generated = positions, rows, first_generated

    @property
    def sequences(self) -> Tensor:
        shape = self.positions.shape
        rows = torch.arange(shape[0], device=self.positions.device) if self._rows is None else self._rows
        return rows.view(-1, *([1] * (len(shape) - rows.dim()))).expand(shape)

    @property
    def new_positions(self) -> Tensor:
        return self.positions - self._first_generated[self.sequences]


class TokenProcessor(Protocol):
    """scores [..., V] -> scores [..., V] (may change its argument in place)."""

    def __call__(self, scores: Tensor, sites: Sites) -> Tensor: ...


class ExcludeTokens:
    """Never draw ``ids`` (those within the scores' width)."""

    def __init__(self, ids: Sequence[int]):
        self.ids = sorted(set(ids))

    def within(self, width: int) -> list[int]:
        return [i for i in self.ids if i < width]

    def __call__(self, scores: Tensor, sites: Sites) -> Tensor:
        ids = self.within(scores.shape[-1])
        if ids:
            scores[..., ids] = -math.inf
        return scores


class SuppressEos:
    """No ``eos_id`` at the first ``min_new_tokens`` generated positions of a sequence."""

    def __init__(self, eos_id: int, min_new_tokens: int):
        self.eos_id, self.min_new_tokens = eos_id, min_new_tokens

    def __call__(self, scores: Tensor, sites: Sites) -> Tensor:
        if self.eos_id < scores.shape[-1]:
            early = sites.new_positions < self.min_new_tokens
            scores[..., self.eos_id] = scores[..., self.eos_id].masked_fill(early, -math.inf)
        return scores


class Temperature:
    """Scores relative to the row maximum, divided by the temperature; 0 puts all mass on the
    argmax (the first one among ties)."""

    keeps_argmax = True

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, scores: Tensor, sites: Sites) -> Tensor:
        if self.temperature == 0:
            top = scores.argmax(-1, keepdim=True)
            return scores.fill_(-math.inf).scatter_(-1, top, 0.0)
        # relative to the row maximum, so that no temperature, however small, overflows to +inf;
        # one below the dtype's normal range is applied in float64 (in the dtype it rounds to 0)
        scores.sub_(scores.amax(-1, keepdim=True))
        if self.temperature < torch.finfo(scores.dtype).tiny:
            return (scores.double() / self.temperature).to(scores.dtype)
        if self.temperature != 1:
            scores.div_(self.temperature)
        return scores


class TopK:
    """-inf outside the k largest scores."""

    keeps_argmax = True

    def __init__(self, k: int):
        self.k = k

    def __call__(self, scores: Tensor, sites: Sites) -> Tensor:
        if self.k >= scores.shape[-1]:
            return scores
        kth_largest = scores.topk(self.k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth_largest, -math.inf)


class TopP:
    """-inf outside the smallest set of tokens whose probability reaches p (the token that
    crosses p is kept)."""

    keeps_argmax = True

    def __init__(self, p: float):
        self.p = p

    def __call__(self, scores: Tensor, sites: Sites) -> Tensor:
        if self.p >= 1:
            return scores
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        ordered = ordered.masked_fill(mass_before >= self.p, -math.inf)
        return torch.empty_like(scores).scatter_(-1, order, ordered)


class MinP:
    """-inf for tokens less likely than p times the likeliest (compared in log space: the
    normaliser cancels)."""

    keeps_argmax = True

    def __init__(self, p: float):
        self.p = p

    def __call__(self, scores: Tensor, sites: Sites) -> Tensor:
        threshold = scores.amax(-1, keepdim=True) + math.log(self.p)
        return scores.masked_fill(scores < threshold, -math.inf)


def _probability(name: str, value: object, *, closed_low: bool) -> float:
    number = checks.real(name, value)
    if not ((0 <= number if closed_low else 0 < number) and number <= 1):
        raise ValueError(f"{name} must be in {'[' if closed_low else '('}0, 1], got {value}")
    return number


class TokenShaping:
    """The processors of a run in their order (module docstring) and the two ways to draw
    through them: ``fused`` (then :meth:`masked` gives the kernel its arguments) or :meth:`log_probs`."""

    def __init__(self, *, mask_id: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                 min_p: Optional[float], exclude_ids: Sequence[int], eos_id: Optional[int], min_new_tokens: int,
                 processors: Sequence[TokenProcessor]):
        self.exclude = ExcludeTokens([mask_id, *exclude_ids])
        self.masks: list[TokenProcessor] = [self.exclude]
        if eos_id is not None and min_new_tokens > 0:
            self.masks.append(SuppressEos(eos_id, min_new_tokens))
        self.temperature = Temperature(temperature)
        self.filters: list[TokenProcessor] = [
            *([TopK(top_k)] if top_k is not None else []),
            *([TopP(top_p)] if top_p is not None and top_p < 1 else []),
            *([MinP(min_p)] if min_p is not None and min_p > 0 else []),
            *processors,
        ]
        # whether a draw can hand the temperature to the kernel: no filter would change the
        # distribution (none is active, or the temperature is 0 and all of them keep the argmax)
        self.fused = (all(getattr(f, "keeps_argmax", False) for f in self.filters) if temperature == 0
                      else not self.filters)

    def masked(self, logits: Tensor, sites: Sites) -> tuple[Tensor, Optional[int]]:
        """For a fused draw: (scores, exclude) with the masks applied, one excluded id left to
        the kernel when it is the only mask (then the logits are not copied)."""
        ids = self.exclude.within(logits.shape[-1])
        if len(self.masks) == 1 and len(ids) <= 1:
            return logits, (ids[0] if ids else None)
        scores = logits.clone()
        for mask in self.masks:
            scores = mask(scores, sites)
        return scores, None

    def log_probs(self, logits: Tensor, sites: Sites) -> Tensor:
        """Normalised log-probabilities [..., V] (float32, or float64 for float64 logits) of the
        distribution tokens are drawn from."""
        # one working copy, changed in place from here on
        scores = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits.clone()
        for processor in (*self.masks, self.temperature, *self.filters):
            scores = processor(scores, sites)
        return scores.log_softmax(-1)


def check_options(*, temperature: object, top_k: object, top_p: object, min_p: object) -> dict:
    """The token-shaping options as numbers, each checked by name."""
    temperature = checks.real("temperature", temperature)
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    return dict(
        temperature=temperature,
        top_k=None if top_k is None else checks.integer("top_k", top_k, minimum=1),
        top_p=None if top_p is None else _probability("top_p", top_p, closed_low=False),
        min_p=None if min_p is None else _probability("min_p", min_p, closed_low=True),
    )
