"""What every sampler shares: :class:`Run`, the context a strategy works through, and
:class:`SampleResult`, what it returns."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import checks, ops
from ..denoiser import Denoiser
from ..schedules import Schedule
from .options import SamplingOptions
from .processors import Sites, TokenShaping
from .prompts import Prompt, starting_tokens
from .seeds import Streams, call_with_row_seeds, sequence_seeds


@dataclass
class SampleResult:
    """tokens: [B, L] int64, fully unmasked. nfe: network calls (a call on a batch counts
    once). categorical_draws: rows of the vocabulary sampled (with the padding slots of a
    first-hitting step whose rows unmask different counts). seconds: wall time.
    With ``return_history``: history [steps, B, L], the tokens after each step, and
    token_probs [B, L] float64, the probability each token was drawn with under the shaped
    distribution (NaN for prompt tokens, EOS fill and the noise-removal step)."""
    tokens: Tensor
    nfe: int
    categorical_draws: int
    seconds: float
    history: Optional[Tensor] = None
    token_probs: Optional[Tensor] = None


Rows = Optional[Tensor]


class Run:
    """One sampler call: the network, the options, the random streams, the counters.

    A strategy creates it, gets the starting tokens from :meth:`start`, and then for each step
    calls the network (:meth:`network`), draws (:meth:`draw`, :meth:`draw_as_is`,
    :meth:`choose`, :meth:`first_hit`), writes what it keeps (:meth:`fill`) and closes the step
    (:meth:`end_step`). ``rows`` arguments say which sequences a tensor's leading dim holds:
    None for all B in order, or an int64 index tensor.
    """

    def __init__(self, denoiser: Callable[..., Any], options: SamplingOptions, *, mask_id: int) -> None:
        self.start_time = time.perf_counter()
        self.options = options
        self.denoiser = Denoiser(denoiser)
        self.denoiser.warn_if_training()
        self.mask_id = checks.mask_id(mask_id, self.denoiser.num_ids)
        for name, value in (("exclude_ids", options.exclude_ids), ("eos_id", options.eos_id)):
            too_large = [i for i in (value if isinstance(value, tuple) else [value])
                         if i is not None and self.denoiser.num_ids is not None and i >= self.denoiser.num_ids]
            if too_large:
                raise ValueError(f"{name} must hold ids the network takes (< {self.denoiser.num_ids}), got {too_large}")
        if options.eos_id == self.mask_id:
            raise ValueError(f"eos_id must differ from mask_id = {self.mask_id}")
        self.device = torch.device(options.device) if options.device is not None else (
            self.denoiser.device or torch.device("cpu"))
        self.shaping = TokenShaping(mask_id=self.mask_id, temperature=options.temperature, top_k=options.top_k,
                                    top_p=options.top_p, min_p=options.min_p, exclude_ids=options.exclude_ids,
                                    eos_id=options.eos_id, min_new_tokens=options.min_new_tokens,
                                    processors=options.processors)
        self.seed = sequence_seeds(options.seed)
        self.nfe = 0
        self.categorical_draws = 0
        self.steps = 0

    # -- the batch -------------------------------------------------------------------------
    def start(self, batch_size: Optional[int], length: int, prefix: Prompt) -> Tensor:
        """The starting tokens [B, L] (see :func:`~mdm_ext.sampling.prompts.starting_tokens`):
        every position holding ``mask_id`` is generated."""
        x = starting_tokens(prefix, batch_size=batch_size, length=length, mask_id=self.mask_id,
                            num_ids=self.denoiser.num_ids, device=self.device)
        batch, length = x.shape
        self.batch_size = batch
        self.streams = Streams(self.seed, batch, self.device)
        self.generated = x == self.mask_id  # [B, L]: the positions this run decides
        columns = torch.arange(length, device=x.device)
        self.first_generated = torch.where(self.generated, columns, length).amin(1)  # [B]
        # the prefix's ids are checked against the logits' width at the first call (one read)
        self.unchecked_max = x.masked_fill(self.generated, -1).max() if prefix is not None else None
        self.network_kwargs = self._batch_kwargs(batch)
        history = self.options.return_history
        self.history: Optional[list[Tensor]] = [] if history else None
        self.token_probs = torch.full(x.shape, math.nan, dtype=torch.float64, device=x.device) if history else None
        return x

    def _batch_kwargs(self, batch: int) -> dict[str, Any]:
        kwargs = dict(self.options.network_kwargs or {})
        for name, value in kwargs.items():
            if isinstance(value, Tensor):
                if value.dim() == 0 or value.shape[0] != batch:
                    raise ValueError(f"network_kwargs[{name!r}] must have a leading batch dim of B = {batch} "
                                     f"(it travels with its rows), got shape {tuple(value.shape)}")
                kwargs[name] = value.to(self.device)
        return kwargs

    @property
    def keeps_history(self) -> bool:
        """Whether the run records history (then strategies pass the probabilities of what
        they write to :meth:`fill`)."""
        return self.history is not None

    # -- the network -----------------------------------------------------------------------
    def network(self, x: Tensor, rows: Rows = None, *, t: Optional[Tensor] = None,
                positions: Optional[Tensor] = None, **call_kwargs: Any) -> Tensor:
        """The network's logits [b, L or K, V] for x: [b, L], the sequences ``rows`` (all B
        when None), with their times t [b] and query positions [b, K] if any; tensors of
        ``network_kwargs`` go along with the same rows. ``call_kwargs`` (a strategy's own, e.g.
        a cache) are passed as they are, after them."""
        self.nfe += 1
        kwargs = self.network_kwargs if rows is None else {
            name: value.index_select(0, rows.to(value.device)) if isinstance(value, Tensor) else value
            for name, value in self.network_kwargs.items()}
        logits = self.denoiser(x, t=t, positions=positions, **kwargs, **call_kwargs)
        if self.unchecked_max is not None:
            largest, self.unchecked_max = int(self.unchecked_max), None
            if largest >= logits.shape[-1]:
                raise ValueError(f"prefix holds id {largest}, beyond the denoiser's {logits.shape[-1]} logits")
        return logits

    # -- draws -----------------------------------------------------------------------------
    def _sites(self, positions: Tensor, rows: Rows) -> Sites:
        """Draw sites at ``positions`` [...] of the sequences ``rows``: None (the leading dim is
        all B), [shape[0]], or one per site."""
        return Sites(positions, rows, self.first_generated)

    def _row_sites(self, x: Tensor, rows: Rows) -> Sites:
        """One site per row of x (position 0) for calls that draw per sequence."""
        return Sites(torch.zeros(x.shape[0], dtype=torch.long, device=x.device), rows, self.first_generated)

    def log_probs(self, logits: Tensor, positions: Tensor, rows: Rows = None) -> Tensor:
        """The shaped log-probabilities [..., V] of the draws at ``positions`` [...] (see
        :mod:`~mdm_ext.sampling.processors`)."""
        return self.shaping.log_probs(logits, self._sites(positions, rows))

    def draw(self, logits: Tensor, positions: Tensor, rows: Rows = None) -> tuple[Tensor, Optional[Tensor]]:
        """One token per site from the shaped distribution of logits [..., V]; a site is a
        position (``positions`` [...]) of a sequence (``rows``: None when the leading dim is
        all B sequences, else the sequence of each leading index). The fused kernel path when
        the processors allow it (:class:`~mdm_ext.sampling.processors.TokenShaping`).
        Returns tokens [...] and, with ``return_history``, their probabilities [...]."""
        sites = self._sites(positions, rows)
        temperature, exclude = 1.0, None
        if self.shaping.fused:
            scores, exclude = self.shaping.masked(logits, sites)
            temperature = self.shaping.temperature.temperature
        else:
            scores = self.shaping.log_probs(logits, sites)
        tokens = self._draw(scores, sites, temperature=temperature, exclude=exclude)
        probs = None
        if self.token_probs is not None:
            log_probs = scores if not self.shaping.fused else self.shaping.log_probs(logits, sites)
            probs = log_probs.gather(-1, tokens[..., None])[..., 0].double().exp()
        return tokens, probs

    def draw_as_is(self, scores: Tensor, positions: Tensor, rows: Rows = None, *,
                   probabilities: bool = False) -> Tensor:
        """One outcome per site from scores [..., C] taken as they are: unnormalised
        log-probabilities, or with ``probabilities`` unnormalised probabilities."""
        return self._draw(scores, self._sites(positions, rows),
                          kind=ops.categorical if probabilities else ops.gumbel_argmax)

    def _draw(self, scores: Tensor, sites: Sites, *, kind: Optional[Callable[..., Tensor]] = None,
              **kernel_options: Any) -> Tensor:
        kind = kind or ops.gumbel_argmax  # looked up at the call: bench/gpu_samplers.py swaps it
        width = scores.shape[-1]
        self.categorical_draws += scores.numel() // max(width, 1)
        seed, offset = self.streams.next(lambda: sites)
        drawn = call_with_row_seeds(kind, (scores.reshape(-1, width),), seed=seed, offset=offset,
                                    legacy_float32=self.options.legacy_float32, **kernel_options)
        return drawn.view(scores.shape[:-1])

    def choose(self, x: Tensor, k: Union[int, Tensor], rows: Rows = None) -> Tensor:
        """Up to k (an int or [b]) masked positions of each row of x: [b, L], the sequences
        ``rows``, uniformly: bool [b, L]."""
        seed, offset = self.streams.next(lambda: self._row_sites(x, rows))
        if isinstance(k, Tensor):
            return call_with_row_seeds(lambda x, k, **r: ops.choose_masked(x, self.mask_id, k, **r), (x, k),
                                       seed=seed, offset=offset)
        return call_with_row_seeds(lambda x, **r: ops.choose_masked(x, self.mask_id, k, **r), (x,),
                                   seed=seed, offset=offset)

    def first_hit(self, t: Tensor, n_masked: Tensor, schedule: Schedule) -> Tensor:
        """The next unmask time of each of the B sequences, [B] float64 (valid inputs: nothing
        is read back)."""
        seed, offset = self.streams.next(lambda: self._row_sites(t, None))
        return call_with_row_seeds(
            lambda t, n, **r: ops.first_hit_times(t, n, schedule=schedule, validate=False, **r), (t, n_masked),
            seed=seed, offset=offset)

    # -- writing and steps -----------------------------------------------------------------
    def fill(self, x: Tensor, positions: Tensor, tokens: Tensor, rows: Rows = None, *,
             valid: Optional[Tensor] = None, probs: Optional[Tensor] = None) -> None:
        """Writes tokens [b, w] at positions [b, w] of the sequences ``rows`` of x (in place),
        in the ``valid`` slots only (all when None); or tokens [n] at (rows [n], positions [n]).
        A row's positions are distinct, so an invalid slot rewrites its own token. ``probs``
        (the tokens' probabilities) go to the history."""
        if rows is None:
            read, write = (lambda t: t.gather(1, positions)), (lambda t, v: t.scatter_(1, positions, v))
        else:
            index = (rows, positions) if rows.dim() == positions.dim() else (rows[:, None], positions)
            read, write = (lambda t: t[index]), (lambda t, v: t.index_put_(index, v))
        if valid is not None:
            tokens = torch.where(valid, tokens, read(x))
        write(x, tokens)
        if self.token_probs is not None and probs is not None:
            probs = probs.double()
            write(self.token_probs, probs if valid is None else torch.where(valid, probs, read(self.token_probs)))

    def end_step(self, x: Tensor) -> None:
        """After every step: EOS fill (every generated position after a sequence's first
        generated EOS becomes EOS), history and callback."""
        eos_id = self.options.eos_id
        if eos_id is not None:
            columns = torch.arange(x.shape[1], device=x.device)
            first_eos = torch.where((x == eos_id) & self.generated, columns, x.shape[1]).amin(1, keepdim=True)
            after = self.generated & (columns > first_eos)
            x.masked_fill_(after, eos_id)
            if self.token_probs is not None:
                self.token_probs.masked_fill_(after, math.nan)
        if self.history is not None:
            self.history.append(x.clone())
        if self.options.callback is not None:
            self.options.callback(self.steps, x.clone())
        self.steps += 1

    def bar(self, total: int, unit: str) -> tqdm:
        return tqdm(total=total, unit=unit, disable=not self.options.progress, leave=False)

    def result(self, tokens: Tensor) -> SampleResult:
        if tokens.is_cuda:
            torch.cuda.synchronize(tokens.device)
        history = None
        if self.history is not None:
            history = torch.stack(self.history) if self.history else tokens.new_empty((0, *tokens.shape))
        return SampleResult(tokens, self.nfe, self.categorical_draws, time.perf_counter() - self.start_time,
                            history, self.token_probs)


def model_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """The network's own distribution, unshaped: log softmax over the real tokens (mask column
    -inf), float32 or float64."""
    scores = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if mask_id < scores.shape[-1]:
        return ops.masked_log_softmax(scores, mask_id)
    return scores.log_softmax(-1)
