"""Samplers for masked diffusion models: ``import mdm_ext.sample`` is the one import a user's
sampler needs.

Every sampler takes a denoiser (see :mod:`mdm_ext.denoiser`), a batch size, a length, the mask
id, an optional ``prefix`` template, ``temperature``/``top_k``/``top_p``, a ``seed`` and
``progress``, and returns a :class:`SampleResult`. All categorical draws go through the
float64-accurate kernel (:func:`mdm_ext.ops.gumbel_argmax`); ``legacy_float32=True`` switches
them to the float32 recipe whose truncated Gumbel noise lowers the temperature, for study only.
Randomness is counter-based (Philox): positions, times and tokens come from ``seed`` and a call
counter, so a seed gives the same choices on CPU and CUDA (tokens match where the networks'
logits do).

- :func:`ancestral`: the MDLM-style baseline, N time steps, with a per-sequence cache.
- :func:`first_hitting`: the first-hitting sampler, exact for one token per step, parallel for
  more, with optional second-order extrapolation or predictor-corrector steps.
- :func:`confidence`: low-confidence remasking with semi-autoregressive blocks (LLaDA style).
- :func:`autoregressive`: left-to-right sampling of a causal model.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import checks, ops
from .denoiser import Denoiser
from .ops import categorical, gumbel_argmax
from .schedules import alpha, schedule_id

__all__ = [
    "SampleResult", "ancestral", "first_hitting", "confidence", "autoregressive",
    "gumbel_argmax", "categorical",
]


@dataclass
class SampleResult:
    """tokens: [B, L] int64, fully unmasked. nfe: denoiser calls (a call on a batch counts
    once). categorical_draws: rows of the vocabulary sampled (with the padding slots of a
    first-hitting step whose rows unmask different counts). seconds: wall time."""
    tokens: Tensor
    nfe: int
    categorical_draws: int
    seconds: float


def _filter_top(logits: Tensor, top_k: Optional[int], top_p: Optional[float]) -> Tensor:
    """-inf outside the top_k largest logits, then outside the smallest set of tokens whose
    probability reaches top_p (the token crossing top_p is kept). logits: [..., V] -> [..., V]."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, -math.inf)
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        ordered = ordered.masked_fill(mass_before >= top_p, -math.inf)
        logits = torch.empty_like(logits).scatter_(-1, order, ordered)
    return logits


class _Sampling:
    """What every sampler shares: the denoiser, the token draw with its temperature and filters,
    the Philox call counter and the counters of the result."""

    def __init__(self, denoiser: Callable[..., Tensor], *, mask_id: int, temperature: float,
                 top_p: Optional[float], top_k: Optional[int], seed: Optional[int],
                 legacy_float32: bool, progress: bool, device: Optional[Union[str, torch.device]]):
        temperature = checks.real("temperature", temperature)
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        self.top_p = None if top_p is None else checks.real("top_p", top_p)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.denoiser = Denoiser(denoiser)
        self.mask_id = checks.mask_id(mask_id, self.denoiser.num_ids)
        self.temperature = temperature
        self.top_k = None if top_k is None else checks.integer("top_k", top_k, minimum=1)
        self.seed = ops.draw_seed() if seed is None else checks.integer("seed", seed)
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2^63), got {seed}")
        self.legacy_float32 = bool(legacy_float32)
        self.progress = progress
        self.device = torch.device(device) if device is not None else self._network_device()
        self.calls = 0  # Philox offset: one per random kernel call
        self.unchecked_max: Optional[Tensor] = None  # the prefix's largest token id, until checked
        self.nfe = 0
        self.categorical_draws = 0
        self.start = time.perf_counter()

    def _network_device(self) -> torch.device:
        parameters = getattr(self.denoiser.network, "parameters", None)
        if callable(parameters):
            for parameter in parameters():
                return parameter.device
        return torch.device("cpu")

    def _offset(self) -> int:
        self.calls += 1
        return self.calls - 1

    def initial_tokens(self, batch_size: int, length: int, prefix: Optional[Tensor]) -> Tensor:
        """[B, L]: ``prefix`` ([P] or [B, P], P <= L; its mask_id entries stay masked, for
        infilling) followed by masks."""
        batch_size = checks.integer("batch_size", batch_size, minimum=1)
        length = checks.integer("length", length, minimum=1)
        x = torch.full((batch_size, length), self.mask_id, dtype=torch.long, device=self.device)
        if prefix is None:
            return x
        if not isinstance(prefix, Tensor) or prefix.dtype.is_floating_point or prefix.dtype == torch.bool:
            raise TypeError(f"prefix must be an integer tensor, got {getattr(prefix, 'dtype', type(prefix))}")
        if prefix.dim() not in (1, 2) or (prefix.dim() == 2 and prefix.shape[0] != batch_size):
            raise ValueError(f"prefix must have shape [P] or [B = {batch_size}, P], got {tuple(prefix.shape)}")
        if prefix.shape[-1] > length:
            raise ValueError(f"prefix has {prefix.shape[-1]} positions, more than length = {length}")
        if prefix.numel():
            low, high = int(prefix.min()), int(prefix.max())
            vocab = self.denoiser.num_ids
            if low < 0 or (vocab is not None and high >= vocab):
                raise ValueError(f"prefix must hold token ids in [0, {vocab or 'V'}), got values in [{low}, {high}]")
        x[:, : prefix.shape[-1]] = prefix.to(self.device)
        self.unchecked_max = x.masked_fill(x == self.mask_id, -1).max()
        return x

    def evaluate(self, x: Tensor, *, t: Optional[Tensor] = None,
                 positions: Optional[Tensor] = None) -> Tensor:
        """The denoiser's logits [b, L or K, V]. The prefix's ids are checked against V once,
        at the first call (drawn tokens are < V by construction): one read of the device."""
        self.nfe += 1
        logits = self.denoiser(x, t=t, positions=positions)
        if self.unchecked_max is not None:
            largest, self.unchecked_max = int(self.unchecked_max), None
            if largest >= logits.shape[-1]:
                raise ValueError(f"prefix holds id {largest}, beyond the denoiser's {logits.shape[-1]} logits")
        return logits

    def _exclude(self, width: int) -> Optional[int]:
        return self.mask_id if self.mask_id < width else None

    def draw(self, logits: Tensor) -> Tensor:
        """One token per row of logits [..., V] under temperature and filters, never mask_id:
        tokens [...]."""
        self.categorical_draws += logits.numel() // max(logits.shape[-1], 1)
        exclude = self._exclude(logits.shape[-1])
        temperature = self.temperature
        if temperature > 0 and (self.top_k is not None or self.top_p is not None):
            logits = self.log_probs(logits)
            temperature = 1.0
        return gumbel_argmax(logits, temperature=temperature, exclude=exclude, seed=self.seed,
                             offset=self._offset(), legacy_float32=self.legacy_float32)

    def draw_scores(self, scores: Tensor) -> Tensor:
        """One outcome per row of unnormalised log-probabilities [N, C], taken as they are."""
        self.categorical_draws += scores.numel() // max(scores.shape[-1], 1)
        return gumbel_argmax(scores, seed=self.seed, offset=self._offset(),
                             legacy_float32=self.legacy_float32)

    def draw_probs(self, probs: Tensor) -> Tensor:
        """One outcome per row of unnormalised probabilities [..., C]: outcomes [...]."""
        self.categorical_draws += probs.numel() // max(probs.shape[-1], 1)
        return categorical(probs, seed=self.seed, offset=self._offset(), legacy_float32=self.legacy_float32)

    def log_probs(self, logits: Tensor) -> Tensor:
        """Normalised log-probabilities [..., V] (float32 or float64) of the token distribution
        the sampler draws from: the mask column removed, temperature and filters applied;
        temperature 0 puts all mass on the argmax."""
        # one working copy, changed in place from here on
        scores = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits.clone()
        exclude = self._exclude(scores.shape[-1])
        if exclude is not None:
            scores[..., exclude] = -math.inf
        if self.temperature == 0:
            top = scores.argmax(-1, keepdim=True)
            return scores.fill_(-math.inf).scatter_(-1, top, 0.0)
        # relative to the row maximum, so that no temperature, however small, overflows to +inf;
        # one below the dtype's normal range is applied in float64 (in the dtype it rounds to 0)
        scores.sub_(scores.amax(-1, keepdim=True))
        if self.temperature < torch.finfo(scores.dtype).tiny:
            scores = (scores.double() / self.temperature).to(scores.dtype)
        elif self.temperature != 1:
            scores.div_(self.temperature)
        return _filter_top(scores, self.top_k, self.top_p).log_softmax(-1)

    def choose(self, x: Tensor, k: Union[int, Tensor]) -> Tensor:
        """Up to k masked positions per row, uniformly: bool [B, L]."""
        return ops.choose_masked(x, self.mask_id, k, seed=self.seed, offset=self._offset())

    def first_hit(self, t: Tensor, n_masked: Tensor, schedule: str) -> Tensor:
        """The next unmask time of each sequence, [B] float64 (valid inputs: nothing read back)."""
        return ops.first_hit_times(t, n_masked, schedule=schedule, seed=self.seed, offset=self._offset(),
                                   validate=False)

    def bar(self, total: int, unit: str) -> tqdm:
        return tqdm(total=total, unit=unit, disable=not self.progress, leave=False)

    def result(self, tokens: Tensor) -> SampleResult:
        if tokens.is_cuda:
            torch.cuda.synchronize(tokens.device)
        return SampleResult(tokens, self.nfe, self.categorical_draws, time.perf_counter() - self.start)


def _with_stay_column(log_probs: Tensor, log_stay: float, mask_id: int) -> Tensor:
    """Scores [N, max(V, mask_id + 1)] of one ancestral transition: the token log-probabilities
    with the mask column set to ``log_stay``, the log-odds of staying masked."""
    if mask_id >= log_probs.shape[-1]:
        pad = torch.full((log_probs.shape[0], mask_id + 1 - log_probs.shape[-1]), -math.inf,
                         dtype=log_probs.dtype, device=log_probs.device)
        log_probs = torch.cat([log_probs, pad], dim=-1)
    log_probs[:, mask_id] = log_stay
    return log_probs


@torch.no_grad()
def ancestral(
    denoiser: Callable[..., Tensor], *, batch_size: int, length: int, mask_id: int, steps: int,
    schedule: str = "loglinear", cache: bool = True, prefix: Optional[Tensor] = None,
    temperature: float = 1.0, top_p: Optional[float] = None, top_k: Optional[int] = None,
    seed: Optional[int] = None, legacy_float32: bool = False, progress: bool = False,
    device: Optional[Union[str, torch.device]] = None,
) -> SampleResult:
    """The ancestral (MDLM-style) sampler: ``steps`` equal time steps from t = 1 to 0.

    From t to s < t each masked token independently stays masked with probability
    (1 - alpha_s) / (1 - alpha_t), or becomes v with probability
    p(v | x) (alpha_s - alpha_t) / (1 - alpha_t): one categorical over the vocabulary plus the
    mask at every masked position, every step, as MDM codebases draw it (with
    ``legacy_float32`` exactly their float32 recipe). The result follows the model's joint
    distribution only as ``steps`` grows; :func:`first_hitting` gets it exactly in L calls.

    cache: a time-agnostic network's output changes only when its input does, so each
    sequence is re-evaluated only after a step that unmasked one of its tokens (others reuse
    their logits). Time-conditioned networks are called every step.
    Returns tokens [batch_size, length].
    """
    steps = checks.integer("steps", steps, minimum=1)
    schedule_id(schedule)
    run = _Sampling(denoiser, mask_id=mask_id, temperature=temperature, top_p=top_p, top_k=top_k,
                    seed=seed, legacy_float32=legacy_float32, progress=progress, device=device)
    x = run.initial_tokens(batch_size, length, prefix)
    reuse = cache and not run.denoiser.needs_time
    alphas = alpha(torch.linspace(1, 0, steps + 1, dtype=torch.float64), schedule).tolist()
    logits: Optional[Tensor] = None
    stale = torch.ones(batch_size, dtype=torch.bool, device=x.device)
    with run.bar(steps, "step") as bar:
        for step in range(steps):
            # two reads of the device a step (the masked positions, the rows to evaluate): the
            # shapes of its work depend on both
            masked = x == mask_id
            row, position = masked.nonzero(as_tuple=True)
            if row.numel() == 0:
                break
            alpha_t, alpha_s = alphas[step], alphas[step + 1]
            evaluate = masked.any(1) & stale if reuse else masked.any(1)
            rows = evaluate.nonzero().squeeze(1)
            if rows.numel():
                t = torch.full((rows.numel(),), 1 - step / steps, dtype=torch.float64, device=x.device)
                fresh = run.evaluate(x.index_select(0, rows), t=t)
                if logits is None:
                    logits = fresh.new_empty((batch_size, *fresh.shape[1:]))
                logits.index_copy_(0, rows, fresh)
            # log((1 - alpha_s) / (alpha_s - alpha_t)): the token columns hold log p(v | x) only
            log_stay = math.log(1 - alpha_s) - math.log(alpha_s - alpha_t) if alpha_s < 1 else -math.inf
            scores = _with_stay_column(run.log_probs(logits[row, position]), log_stay, mask_id)
            drawn = run.draw_scores(scores)
            x[row, position] = drawn
            unmasked = torch.zeros(batch_size, dtype=torch.int64, device=x.device).index_add_(
                0, row, (drawn != mask_id).long())
            stale = unmasked > 0
            bar.update()
    return run.result(x)


def _step_counts(tokens_per_step: Union[int, Sequence[int]]) -> Callable[[int], int]:
    """Step index -> number of tokens to unmask, from an int or a sequence of counts; asked
    only while tokens are masked, so a sequence that runs out has not covered them."""
    try:
        count = checks.integer("tokens_per_step", tokens_per_step, minimum=1)
        return lambda step: count
    except TypeError:  # not one integer: a sequence of them (list, array, tensor, iterator)
        try:
            entries = list(tokens_per_step)
        except TypeError:
            raise TypeError(f"tokens_per_step must be an int or a sequence of ints, "
                            f"got {type(tokens_per_step).__name__}") from None
    counts = [checks.integer("tokens_per_step entries", k, minimum=1) for k in entries]
    if not counts:
        raise ValueError("tokens_per_step must be an int >= 1 or a non-empty sequence of ints >= 1")

    def count_of(step: int) -> int:
        if step >= len(counts):
            raise ValueError(f"tokens_per_step covers {len(counts)} steps, but tokens are still masked")
        return counts[step]
    return count_of


def _order(order: Union[int, str]) -> Union[int, str]:
    """``order`` as 1, 2 or "pc"; ValueError for anything else (bools and floats included)."""
    if isinstance(order, str) and order == "pc":
        return order
    try:
        number = checks.integer("order", order)
    except TypeError:
        number = None
    if number not in (1, 2):
        raise ValueError(f"order must be 1, 2 or 'pc', got {order!r}")
    return number


def _masked_counts(x: Tensor, mask_id: int, prefix: Optional[Tensor]) -> list[int]:
    """Each row's masked count. Read once (not at all without a prefix): afterwards a
    first-hitting run knows every count and shape on the host, so its steps queue device work
    without waiting for it."""
    if prefix is None:
        return [x.shape[1]] * x.shape[0]
    return (x == mask_id).sum(1).tolist()


def _rows(tensor: Tensor, rows: Optional[Tensor]) -> Tensor:
    """tensor[rows], or tensor itself when rows is None (every row)."""
    return tensor if rows is None else tensor.index_select(0, rows)


def _index(rows: list[int], device: torch.device) -> Tensor:
    """Row indices on ``device``, copied without making the host wait (pinned on CUDA)."""
    index = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda":
        index = index.pin_memory()
    return index.to(device, non_blocking=True)


def _chosen_positions(chosen: Tensor, width: int) -> Tensor:
    """chosen: bool [b, L], at most ``width`` per row -> positions [b, width]: the chosen ones
    first, in increasing order, then unchosen ones (padding of rows with fewer)."""
    return chosen.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]


def _halves_layout(positions: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """For a predictor-corrector step whose rows unmask different counts c: positions [b, w]
    (each row's c chosen ones first) re-laid so that a row's first ceil(c / 2) fill slots
    [0, h) and its other floor(c / 2) slots [h, w), h = ceil(w / 2), padding (distinct unchosen
    positions) elsewhere; the halves are then column slices for every row. counts: [b, 1].
    Returns the positions and valid: bool [b, w]."""
    width = positions.shape[1]
    half = (width + 1) // 2
    slot = torch.arange(width, device=positions.device)
    first_count, second_count = (counts + 1) // 2, counts // 2
    in_first = slot < half
    valid = torch.where(in_first, slot < first_count, slot - half < second_count)
    # chosen sources in order, then the unchosen ones from index c, each used once
    source = torch.where(in_first, torch.where(slot < first_count, slot, counts + slot - first_count),
                         torch.where(slot - half < second_count, first_count + slot - half,
                                     counts + half - first_count + slot - half - second_count))
    return positions.gather(1, source), valid


def _fill(x: Tensor, active: Optional[Tensor], positions: Tensor, valid: Optional[Tensor], tokens: Tensor) -> None:
    """Writes tokens [b, w] at positions [b, w] of the active rows of x (every row when None),
    in the valid slots only (all when None); in place. A row's positions are distinct, so a
    padding slot rewrites its own token."""
    if valid is not None:
        tokens = torch.where(valid, tokens, _rows(x, active).gather(1, positions))
    if active is None:
        x.scatter_(1, positions, tokens)
    else:
        x[active[:, None], positions] = tokens


def _masked_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """log softmax over the real tokens, float32 or float64; the mask column -inf."""
    scores = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if mask_id < scores.shape[-1]:
        return ops.masked_log_softmax(scores, mask_id)
    return scores.log_softmax(-1)


def _extrapolate(current: Tensor, previous: Tensor, ratio: float) -> Tensor:
    """current + ratio (current - previous) for log-probabilities [..., V]; entries where
    either is -inf keep ``current`` (an impossible token stays impossible and a token that just
    became possible is not pushed to +inf)."""
    finite = torch.isfinite(current) & torch.isfinite(previous)
    step = torch.where(finite, current - previous, torch.zeros_like(current))
    return current + ratio * step


@torch.no_grad()
def first_hitting(
    denoiser: Callable[..., Tensor], *, batch_size: int, length: int, mask_id: int,
    tokens_per_step: Union[int, Sequence[int]] = 1, order: Union[int, str] = 1,
    prefix: Optional[Tensor] = None, schedule: str = "linear", temperature: float = 1.0,
    top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
    legacy_float32: bool = False, progress: bool = False,
    device: Optional[Union[str, torch.device]] = None,
) -> SampleResult:
    """The first-hitting sampler: each step unmasks masked positions chosen uniformly and draws
    their tokens from the network's output at those positions only.

    With ``tokens_per_step=1`` and ``order=1`` it is exact: with n of a sequence's tokens
    masked at time tau, the next unmask time is tau' = alpha^-1(1 - u^{1/n} (1 - alpha_tau)),
    one masked position (uniform) unmasks then, and the result has the law of the ancestral
    sampler in the limit of infinitely many steps, in L network calls. Times matter only to a
    time-conditioned network, which gets each sequence's own tau' (sequences advance
    asynchronously); a time-agnostic network is never given a time, so none is drawn.

    tokens_per_step: k tokens per call (the last step takes what is left), or a sequence of
        counts, one per step, that must cover the masked positions. With k > 1 the k tokens
        are drawn independently given the same state: fewer calls, an approximation.
    order: 1; 2 extrapolates each position's log-probabilities linearly from the previous
        call's output to the middle of the step (no extra calls: each call also evaluates the
        next step's positions, which are chosen one step ahead); "pc" is a predictor-corrector
        step: the first ceil(c / 2) of the c positions a sequence unmasks in the step are drawn
        from the current output, the network is called again, and the others are drawn from
        max(2 p_mid - p_now, 0) (one extra call per step with k >= 2; the trapezoidal rule
        at the step's midpoint).
    Every count and shape follows on the host from the initial masked counts, so a step queues
    its device work without reading anything back but the token draw's error check.
    Returns tokens [batch_size, length].
    """
    order = _order(order)
    schedule_id(schedule)
    count_of = _step_counts(tokens_per_step)
    run = _Sampling(denoiser, mask_id=mask_id, temperature=temperature, top_p=top_p, top_k=top_k,
                    seed=seed, legacy_float32=legacy_float32, progress=progress, device=device)
    x = run.initial_tokens(batch_size, length, prefix)
    remaining = _masked_counts(x, mask_id, prefix)
    timed = run.denoiser.needs_time
    t = torch.ones(batch_size, dtype=torch.float64, device=x.device)
    active_rows: Optional[tuple[bool, ...]] = None
    active: Optional[Tensor] = None  # indices of the rows with masks left; None: every row
    # order 2: positions of this step chosen at the last one, and their log-probabilities there
    upcoming: Optional[Tensor] = None
    previous_log_probs: Optional[Tensor] = None
    previous_count = 0
    step = 0
    with run.bar(sum(remaining), "token") as bar:
        while max(remaining) > 0:
            k = count_of(step)
            take = [min(k, n) for n in remaining]
            width = max(take)
            rows_with_masks = tuple(n > 0 for n in take)
            if rows_with_masks != active_rows:  # a row finished: new indices
                active_rows = rows_with_masks
                active = None if all(active_rows) else _index(
                    [i for i, a in enumerate(active_rows) if a], x.device)
            chosen = upcoming if upcoming is not None else run.choose(x, k)
            chosen_rows = _rows(chosen, active)
            positions = _chosen_positions(chosen_rows, width)
            valid = None  # every slot holds a chosen position unless the rows' counts differ
            if min(n for n in take if n) < width:
                counts = chosen_rows.sum(1, keepdim=True)
                if order == "pc":
                    positions, valid = _halves_layout(positions, counts)
                else:
                    valid = torch.arange(width, device=x.device) < counts
            remaining = [n - c for n, c in zip(remaining, take)]
            query = positions
            if order == 2:
                upcoming = None
                if max(remaining) > 0:
                    next_k = count_of(step + 1)
                    upcoming = run.choose(x.masked_fill(chosen, -1), next_k)  # this step's positions excluded
                    ahead = _chosen_positions(_rows(upcoming, active), max(min(next_k, n) for n in remaining))
                    query = torch.cat([positions, ahead], dim=1)
            times = None
            if timed:
                n_masked = (x == mask_id).sum(1)
                t_first = run.first_hit(t, n_masked, schedule)
                times = _rows(t_first, active)
                for _ in range(1, k):  # the step's remaining unmask times; the last one stays
                    n_masked = (n_masked - 1).clamp(min=0)
                    t_first = run.first_hit(t_first, n_masked, schedule)
                t = t_first  # rows without masks keep their time
            logits = run.evaluate(_rows(x, active), t=times, positions=query)
            now = logits[:, :width]
            if order == 2:
                scores = now
                if previous_log_probs is not None:
                    scores = _extrapolate(_masked_log_probs(now, mask_id), _rows(previous_log_probs, active),
                                          k / (2 * previous_count))
                _fill(x, active, positions, valid, run.draw(scores))
                if upcoming is not None:
                    ahead_log_probs = _masked_log_probs(logits[:, width:], mask_id)
                    previous_log_probs = ahead_log_probs if active is None else ahead_log_probs.new_zeros(
                        (batch_size, *ahead_log_probs.shape[1:])).index_copy_(0, active, ahead_log_probs)
                    previous_count = k
            elif order == "pc" and width >= 2:
                _predict_correct(run, x, active, positions, valid, now, times)
            else:
                _fill(x, active, positions, valid, run.draw(now))
            bar.update(sum(take))
            step += 1
    return run.result(x)


def _predict_correct(run: _Sampling, x: Tensor, active: Optional[Tensor], positions: Tensor,
                     valid: Optional[Tensor], now: Tensor, times: Optional[Tensor]) -> None:
    """One predictor-corrector step (see :func:`first_hitting`) on w >= 2 slots, in place on x:
    slots [0, ceil(w / 2)) drawn from the current output ``now`` [b, w, V], the others from the
    corrected one after a call at them (rows with fewer tokens: :func:`_halves_layout`)."""
    half = (positions.shape[1] + 1) // 2
    _fill(x, active, positions[:, :half], None if valid is None else valid[:, :half], run.draw(now[:, :half]))
    mid = run.evaluate(_rows(x, active), t=times, positions=positions[:, half:])
    p_now = run.log_probs(now[:, half:]).double().exp()
    p_mid = run.log_probs(mid).double().exp()
    corrected = (2 * p_mid - p_now).clamp(min=0)
    # rounding can cancel every entry only where p_mid and p_now agree; fall back to p_mid there
    corrected = torch.where(corrected.sum(-1, keepdim=True) > 0, corrected, p_mid)
    _fill(x, active, positions[:, half:], None if valid is None else valid[:, half:], run.draw_probs(corrected))


@torch.no_grad()
def confidence(
    denoiser: Callable[..., Tensor], *, batch_size: int, length: int, mask_id: int, steps: int,
    block_length: Optional[int] = None, remasking: str = "low_confidence",
    prefix: Optional[Tensor] = None, temperature: float = 1.0, top_p: Optional[float] = None,
    top_k: Optional[int] = None, seed: Optional[int] = None, legacy_float32: bool = False,
    progress: bool = False, device: Optional[Union[str, torch.device]] = None,
) -> SampleResult:
    """Confidence-based decoding as LLaDA-style models use it.

    The masked positions are filled in blocks of ``block_length`` from left to right (semi-
    autoregressive; one block of the whole length by default), each block in an equal share of
    ``steps``. At each step a token is drawn at every masked position of the block, and the
    tokens to keep, an even share of the block's masked count, are those whose drawn token is
    most probable ("low_confidence": the least confident ones are remasked) or chosen at random
    ("random"). A time-conditioned network gets the masked fraction as its time.
    Returns tokens [batch_size, length].
    """
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    length = checks.integer("length", length, minimum=1)
    block_length = checks.integer("block_length", length if block_length is None else block_length, minimum=1)
    n_blocks = -(-length // block_length)
    steps = checks.integer("steps", steps)
    if steps < n_blocks:
        raise ValueError(f"steps must be an int >= the number of blocks ({n_blocks}), got {steps}")
    run = _Sampling(denoiser, mask_id=mask_id, temperature=temperature, top_p=top_p, top_k=top_k,
                    seed=seed, legacy_float32=legacy_float32, progress=progress, device=device)
    x = run.initial_tokens(batch_size, length, prefix)
    column = torch.arange(length, device=x.device)
    with run.bar(steps, "step") as bar:
        for block in range(n_blocks):
            in_block = (column >= block * block_length) & (column < (block + 1) * block_length)
            block_steps = steps // n_blocks + (block < steps % n_blocks)
            for step in range(block_steps):
                masked = (x == mask_id) & in_block
                n_masked = masked.sum(1)
                if not bool(n_masked.any()):
                    break
                # an even share of what is left: all of it at the block's last step
                keep = -(-n_masked // (block_steps - step))
                active = n_masked > 0
                if remasking == "random":
                    # keeping a uniform subset is choosing it first: draw only there
                    masked = run.choose(x.masked_fill(~in_block, -1), keep.masked_fill(~active, 0))
                t = (x[active] == mask_id).double().mean(1)
                logits = run.evaluate(x[active], t=t)
                row, position = masked[active].nonzero(as_tuple=True)
                rows_logits = logits[row, position]
                drawn = run.draw(rows_logits)
                sequence = active.nonzero(as_tuple=True)[0][row]
                if remasking == "low_confidence":
                    score = _masked_log_probs(rows_logits, mask_id).gather(1, drawn[:, None])[:, 0]
                    confidence_map = torch.full(masked[active].shape, -math.inf, dtype=score.dtype, device=x.device)
                    confidence_map[row, position] = score
                    rank = confidence_map.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                    selected = (rank < keep[active][:, None])[row, position]
                    sequence, position, drawn = sequence[selected], position[selected], drawn[selected]
                x[sequence, position] = drawn
                bar.update()
    return run.result(x)


@torch.no_grad()
def autoregressive(
    model: Callable[..., Tensor], *, batch_size: int, length: int, bos_id: int,
    prefix: Optional[Tensor] = None, temperature: float = 1.0, top_p: Optional[float] = None,
    top_k: Optional[int] = None, seed: Optional[int] = None, legacy_float32: bool = False,
    progress: bool = False, device: Optional[Union[str, torch.device]] = None,
) -> SampleResult:
    """Left-to-right sampling of a causal model (logits at position i predict token i + 1),
    fed ``[bos_id, prefix..., drawn...]``; ``bos_id`` is never drawn. A model with
    ``accepts_positions`` pays its output head at the last position only.
    Returns tokens [batch_size, length], without the BOS token.
    """
    checks.integer("bos_id", bos_id, minimum=0)
    run = _Sampling(model, mask_id=bos_id, temperature=temperature, top_p=top_p, top_k=top_k,
                    seed=seed, legacy_float32=legacy_float32, progress=progress, device=device)
    template = run.initial_tokens(batch_size, length, prefix)
    fixed = 0 if prefix is None else prefix.shape[-1]
    if bool((template[:, :fixed] == bos_id).any()):
        raise ValueError("prefix must not contain bos_id")
    x = torch.cat([torch.full((batch_size, 1), bos_id, dtype=torch.long, device=template.device),
                   template[:, :fixed]], dim=1)
    with run.bar(length - fixed, "token") as bar:
        while x.shape[1] <= length:
            last = torch.full((batch_size, 1), x.shape[1] - 1, dtype=torch.long, device=x.device)
            logits = run.evaluate(x, positions=last)
            x = torch.cat([x, run.draw(logits[:, 0])[:, None]], dim=1)
            bar.update()
    return run.result(x[:, 1:])
