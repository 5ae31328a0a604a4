"""The first-hitting sampler: a host-side plan of its steps and one step function per order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from .. import checks
from .. import schedules
from .options import SamplingOptions, resolve
from .prompts import Prompt
from .run import Rows, Run, SampleResult, model_log_probs

ORDERS = ("first", "second", "predictor_corrector")
_ORDER_NUMBERS = {1: "first", 2: "second"}  # the former spellings: 1, 2 and "pc"


def order_name(order: Union[int, str]) -> str:
    """``order`` as one of ORDERS (1, 2 and "pc" accepted); ValueError for anything else."""
    if isinstance(order, str):
        name = "predictor_corrector" if order == "pc" else order
    else:
        try:
            name = _ORDER_NUMBERS.get(checks.integer("order", order))
        except TypeError:
            name = None
    if name not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (or 1, 2, 'pc'), got {order!r}")
    return name


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


def _index(rows: list[int], device: torch.device) -> Tensor:
    """Row indices on ``device``, copied without making the host wait (pinned on CUDA)."""
    index = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda":
        index = index.pin_memory()
    return index.to(device, non_blocking=True)


def _rows(tensor: Tensor, rows: Rows) -> Tensor:
    """tensor[rows], or tensor itself when rows is None (every row)."""
    return tensor if rows is None else tensor.index_select(0, rows)


def _chosen_positions(chosen: Tensor, width: int) -> Tensor:
    """chosen: bool [b, L], at most ``width`` per row -> positions [b, width]: the chosen ones
    first, in increasing order, then unchosen ones (padding of rows with fewer)."""
    return chosen.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]


@dataclass
class Step:
    """One first-hitting step, known on the host before it runs."""

    index: int
    count: int  # k: tokens a row unmasks (all it has left when fewer)
    width: int  # slots per row: the largest count taken
    takes: list[int]  # tokens each of the B rows unmasks
    active: Rows  # the rows with masks left (None: every row)
    exact: bool  # the rows take ``takes`` exactly (False after EOS fill: the counts follow the data)
    even: bool  # every active row takes ``width``: no padding slots


class Plan:
    """The host-side schedule: each row's masked count, known from the start and updated by
    what each step takes, so a step queues its device work without reading anything back.
    With EOS fill the counts change by the data and are read back after each step."""

    def __init__(self, remaining: list[int], count_of: Callable[[int], int], device: torch.device,
                 exact_counts: bool):
        self.remaining, self.count_of, self.device = remaining, count_of, device
        self.exact_counts = exact_counts  # False: a step may take fewer than planned (EOS)
        self._active_rows: Optional[tuple[bool, ...]] = None
        self._active: Rows = None

    def __iter__(self) -> Iterator[Step]:
        index = 0
        while max(self.remaining) > 0:
            k = self.count_of(index)
            takes = [min(k, n) for n in self.remaining]
            active_rows = tuple(n > 0 for n in takes)
            if active_rows != self._active_rows:  # a row finished: new indices
                self._active_rows = active_rows
                self._active = None if all(active_rows) else _index(
                    [i for i, a in enumerate(active_rows) if a], self.device)
            width = max(takes)
            step = Step(index, k, width, takes, self._active, self.exact_counts,
                        self.exact_counts and min(n for n in takes if n) == width)
            self.remaining = [n - c for n, c in zip(self.remaining, takes)]
            yield step
            index += 1

    def ahead(self, step: Step) -> Optional[tuple[int, int, Rows]]:
        """(count, width, rows) of the step after ``step`` (rows: those with masks left then,
        None for all), or None when it is the last."""
        if max(self.remaining) == 0:
            return None
        k = self.count_of(step.index + 1)
        rows = None if min(self.remaining) > 0 else _index([r for r, n in enumerate(self.remaining) if n], self.device)
        return k, max(min(k, n) for n in self.remaining), rows


class _FirstHitting:
    """The state of a first-hitting run and its step functions, one per order."""

    def __init__(self, run: Run, x: Tensor, schedule: schedules.Schedule):
        self.run, self.x, self.schedule = run, x, schedule
        self.timed = run.denoiser.needs_time
        self.t = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        # second order: this step's positions, chosen at the last one, and their log-probabilities there
        self.upcoming: Optional[Tensor] = None
        self.previous: Optional[tuple[Tensor, Tensor, int]] = None  # positions [B, w'], log-probs, count

    @staticmethod
    def _layout(chosen_rows: Tensor, width: int, even: bool) -> tuple[Tensor, Optional[Tensor]]:
        """positions [b, width] of the chosen positions (bool [b, L]) and valid [b, width]
        (None when ``even``: every row has ``width`` chosen)."""
        positions = _chosen_positions(chosen_rows, width)
        if even:
            return positions, None
        counts = chosen_rows.sum(1, keepdim=True)
        return positions, torch.arange(width, device=positions.device) < counts

    def _times(self, step: Step) -> Optional[Tensor]:
        """Each active row's next unmask time (time-conditioned networks only): the first of
        the step's k hits is where the network is evaluated; the row's clock moves to the last."""
        if not self.timed:
            return None
        n_masked = (self.x == self.run.mask_id).sum(1)
        t_first = self.run.first_hit(self.t, n_masked, self.schedule)
        times = _rows(t_first, step.active)
        for _ in range(1, step.count):
            n_masked = (n_masked - 1).clamp(min=0)
            t_first = self.run.first_hit(t_first, n_masked, self.schedule)
        self.t = t_first  # rows without masks keep their time
        return times

    def _draw_and_fill(self, logits: Tensor, positions: Tensor, valid: Optional[Tensor], active: Rows) -> None:
        tokens, probs = self.run.draw(logits, positions, active)
        self.run.fill(self.x, positions, tokens, active, valid=valid, probs=probs)

    def first(self, step: Step) -> None:
        """k positions chosen uniformly, their tokens drawn independently from one call."""
        positions, valid = self._layout(_rows(self.run.choose(self.x, step.count), step.active), step.width,
                                        step.even)
        times = self._times(step)
        logits = self.run.network(_rows(self.x, step.active), step.active, t=times, positions=positions)
        self._draw_and_fill(logits, positions, valid, step.active)

    def second(self, step: Step, ahead: Optional[tuple[int, int, Rows]]) -> None:
        """As :meth:`first`, from log-probabilities extrapolated linearly from the previous
        call's output to the middle of the step; each call also evaluates the next step's
        positions, chosen one step ahead (no extra calls)."""
        run, active = self.run, step.active
        chosen = self.upcoming if self.upcoming is not None else run.choose(self.x, step.count)
        positions, valid = self._layout(_rows(chosen, active), step.width, step.even)
        query, self.upcoming = positions, None
        if ahead is not None:
            # chosen for the rows with a next step only: a row's draws must not depend on the others
            next_count, next_width, next_rows = ahead
            unchosen = _rows(self.x.masked_fill(chosen, -1), next_rows)  # this step's positions excluded
            self.upcoming = run.choose(unchosen, next_count, next_rows)
            if next_rows is not None:
                self.upcoming = self.upcoming.new_zeros(self.x.shape).index_copy_(0, next_rows, self.upcoming)
            query = torch.cat([positions, _chosen_positions(_rows(self.upcoming, active), next_width)], dim=1)
        times = self._times(step)
        logits = run.network(_rows(self.x, active), active, t=times, positions=query)
        now = logits[:, :step.width]
        scores = now
        if self.previous is not None:
            previous_positions, previous_log_probs, previous_count = self.previous
            then = _rows(previous_log_probs, active)  # slot for slot: the same positions, laid out alike
            if not step.exact:  # EOS fill dropped some of the positions chosen ahead: match by position
                slot = (positions[:, :, None] == _rows(previous_positions, active)[:, None, :]).int().argmax(2)
                then = then.gather(1, slot[..., None].expand(-1, -1, now.shape[-1]))
            scores = _extrapolate(model_log_probs(now, run.mask_id), then, step.count / (2 * previous_count))
        self._draw_and_fill(scores, positions, valid, active)
        self.previous = None
        if ahead is not None:
            ahead_positions, ahead_log_probs = query[:, step.width:], model_log_probs(logits[:, step.width:], run.mask_id)
            if active is not None:  # kept for all B rows: the next step may drop some
                ahead_positions = ahead_positions.new_zeros((self.x.shape[0], ahead_positions.shape[1])).index_copy_(
                    0, active, ahead_positions)
                ahead_log_probs = ahead_log_probs.new_zeros((self.x.shape[0], *ahead_log_probs.shape[1:])).index_copy_(
                    0, active, ahead_log_probs)
            self.previous = ahead_positions, ahead_log_probs, step.count

    def predictor_corrector(self, step: Step) -> None:
        """The first ceil(c / 2) of the c positions a row unmasks (in position order) are drawn
        from the current output; the network is called again at the other floor(c / 2) (rows
        with c >= 2 only), whose tokens are drawn from max(2 p_mid - p_now, 0) (the trapezoidal
        rule at the step's midpoint): one extra call per step with two or more tokens."""
        run, active = self.run, step.active
        chosen = _rows(run.choose(self.x, step.count), active)
        half = (step.width + 1) // 2
        if step.even:  # the halves are column slices of the positions in order
            query, _ = self._layout(chosen, step.width, True)
            (first, second), first_valid, second_valid = (query[:, :half], query[:, half:]), None, None
        else:
            first_count = (chosen.sum(1, keepdim=True) + 1) // 2
            in_first = chosen & (chosen.cumsum(1) <= first_count)  # each row's first half, by position
            first, first_valid = self._layout(in_first, half, False)
            second, second_valid = self._layout(chosen & ~in_first, step.width - half, False)
            query = torch.cat([first, second], dim=1)
        times = self._times(step)
        now = run.network(_rows(self.x, active), active, t=times, positions=query)
        self._draw_and_fill(now[:, :half], first, first_valid, active)
        # the corrector call: rows with a second half only (the others are done with this step)
        taking = [c for c in step.takes if c > 0]
        local = [i for i, c in enumerate(taking) if c >= 2]
        if not local:
            return
        now = now[:, half:]
        if len(local) < len(taking):
            index = _index(local, self.x.device)
            now, second, second_valid, times = (None if tensor is None else tensor.index_select(0, index)
                                                for tensor in (now, second, second_valid, times))
            active = index if active is None else active.index_select(0, index)
        mid = run.network(_rows(self.x, active), active, t=times, positions=second)
        p_now = run.log_probs(now, second, active).double().exp()
        p_mid = run.log_probs(mid, second, active).double().exp()
        corrected = (2 * p_mid - p_now).clamp(min=0)
        # rounding can cancel every entry only where p_mid and p_now agree; fall back to p_mid there
        corrected = torch.where(corrected.sum(-1, keepdim=True) > 0, corrected, p_mid)
        tokens = run.draw_as_is(corrected, second, active, probabilities=True)
        probs = None
        if run.keeps_history:
            probs = (corrected / corrected.sum(-1, keepdim=True)).gather(-1, tokens[..., None])[..., 0]
        run.fill(self.x, second, tokens, active, valid=second_valid, probs=probs)


def _extrapolate(current: Tensor, previous: Tensor, ratio: float) -> Tensor:
    """current + ratio (current - previous) for log-probabilities [..., V]; entries where
    either is -inf keep ``current`` (an impossible token stays impossible and a token that just
    became possible is not pushed to +inf)."""
    finite = torch.isfinite(current) & torch.isfinite(previous)
    step = torch.where(finite, current - previous, torch.zeros_like(current))
    return current + ratio * step


@torch.no_grad()
def first_hitting(
    denoiser: Callable[..., Any], *, length: int, mask_id: int, batch_size: Optional[int] = None,
    tokens_per_step: Union[int, Sequence[int]] = 1, order: Union[str, int] = "first",
    schedule: schedules.ScheduleArgument = "alpha_linear", prefix: Prompt = None, options: Optional[SamplingOptions] = None,
    **option_values: Any,
) -> SampleResult:
    """The first-hitting sampler: each step unmasks masked positions chosen uniformly and draws
    their tokens from the network's output at those positions only.

    With ``tokens_per_step=1`` and ``order="first"`` it is exact: with n of a sequence's
    tokens masked at time tau, the next unmask time is tau' = alpha^-1(1 - u^{1/n} (1 - alpha_tau)),
    one masked position (uniform) unmasks then, and the result has the law of the ancestral
    sampler in the limit of infinitely many steps, in L network calls. Times matter only to a
    time-conditioned network, which gets each sequence's own tau' (sequences advance
    asynchronously); a time-agnostic network is never given a time, so none is drawn.

    tokens_per_step: k tokens per call (the last step takes what is left), or a sequence of
        counts, one per step, that must cover the masked positions. With k > 1 the k tokens
        are drawn independently given the same state: fewer calls, an approximation.
    order: "first"; "second" extrapolates each position's log-probabilities linearly from
        the previous call's output to the middle of the step (no extra calls);
        "predictor_corrector": one extra call per step (see
        :meth:`_FirstHitting.predictor_corrector`). 1, 2 and "pc" are the former names.
    Every count and shape follows on the host from the initial masked counts (the plan), so
    a step queues its device work without reading anything back but the token draw's error
    check; with ``eos_id`` the counts are read back once a step.
    Options (temperature, top_k, top_p, min_p, exclude_ids, eos_id, seed, network_kwargs,
    callback, return_history, ...): :class:`~mdm_ext.sampling.SamplingOptions`.
    Returns tokens [B, length].
    """
    order = order_name(order)
    schedule = schedules.get(schedule)
    count_of = _step_counts(tokens_per_step)
    run = Run(denoiser, resolve(options, option_values, "first_hitting"), mask_id=mask_id)
    x = run.start(batch_size, length, prefix)
    eos = run.options.eos_id is not None
    # read once (not at all without a prefix): afterwards the plan knows every count
    remaining = [x.shape[1]] * x.shape[0] if prefix is None else (x == mask_id).sum(1).tolist()
    plan = Plan(remaining, count_of, x.device, exact_counts=not eos)
    sampler = _FirstHitting(run, x, schedule)
    with run.bar(sum(remaining), "token") as bar:
        for step in plan:
            if order == "second":
                sampler.second(step, plan.ahead(step))
            elif order == "predictor_corrector":
                sampler.predictor_corrector(step)
            else:
                sampler.first(step)
            run.end_step(x)
            if eos:  # EOS fill decided positions: the counts follow the data
                plan.remaining = (x == mask_id).sum(1).tolist()
                if sampler.upcoming is not None:
                    sampler.upcoming &= x == mask_id
            bar.update(sum(step.takes))
    return run.result(x)
