"""The ancestral (MDLM-style) sampler: N time steps from t = 1 to 0."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .. import checks
from .. import schedules
from .options import SamplingOptions, resolve
from .prompts import Prompt
from .run import Run, SampleResult


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
    denoiser: Callable[..., Any], *, length: int, mask_id: int, steps: int, batch_size: Optional[int] = None,
    schedule: schedules.ScheduleArgument = "loglinear", cache: bool = True, noise_removal: bool = False, final_time: float = 1e-5,
    prefix: Prompt = None, options: Optional[SamplingOptions] = None, **option_values: Any,
) -> SampleResult:
    """The ancestral (MDLM-style) sampler: ``steps`` equal time steps from t = 1 to 0.

    From t to s < t each masked token independently stays masked with probability
    (1 - alpha_s) / (1 - alpha_t), or becomes v with probability
    p(v | x) (alpha_s - alpha_t) / (1 - alpha_t): one categorical over the vocabulary plus the
    mask at every masked position, every step, as MDM codebases draw it (with
    ``legacy_float32`` exactly their float32 recipe). The result follows the model's joint
    distribution only as ``steps`` grows; :func:`first_hitting` gets it exactly in L calls.
    The last step lands on clean data (alpha = 1) whatever the schedule's alpha_0.

    cache: a time-agnostic network's output changes only when its input does, so each
        sequence is re-evaluated only after a step that changed it (others reuse their
        logits). Time-conditioned networks are called every step.
    noise_removal: MDLM's last step: the steps stop at t = ``final_time`` (MDLM's sampling
        eps) and one more call fills every position still masked with its most likely token
        (under the shaped distribution: excluded ids stay excluded).
    Options (temperature, top_k, top_p, min_p, exclude_ids, eos_id, seed, network_kwargs,
    callback, return_history, ...): :class:`~mdm_ext.sampling.SamplingOptions`.
    Returns tokens [B, length].
    """
    steps = checks.integer("steps", steps, minimum=1)
    schedule = schedules.get(schedule)
    final_time = checks.real("final_time", final_time)
    if noise_removal and not 0 < final_time < 1:
        raise ValueError(f"final_time must be in (0, 1) with noise_removal, got {final_time}")
    run = Run(denoiser, resolve(options, option_values, "ancestral"), mask_id=mask_id)
    x = run.start(batch_size, length, prefix)
    end = final_time if noise_removal else 0.0
    reuse = cache and not run.denoiser.needs_time
    alphas = schedules.alpha(torch.linspace(1, end, steps + 1, dtype=torch.float64), schedule).tolist()
    if not noise_removal:
        alphas[-1] = 1.0
    logits: Optional[Tensor] = None
    stale = torch.ones(run.batch_size, dtype=torch.bool, device=x.device)
    with run.bar(steps, "step") as bar:
        for step in range(steps):
            # two reads of the device a step (the masked positions, the rows to evaluate): the
            # shapes of its work depend on both
            masked = x == mask_id
            row, position = masked.nonzero(as_tuple=True)
            if row.numel() == 0:
                break
            alpha_t, alpha_s = alphas[step], alphas[step + 1]
            rows = (masked.any(1) & stale if reuse else masked.any(1)).nonzero().squeeze(1)
            if rows.numel():
                t = torch.full((rows.numel(),), 1 - step * (1 - end) / steps, dtype=torch.float64, device=x.device)
                fresh = run.network(x.index_select(0, rows), rows, t=t)
                if logits is None:
                    logits = fresh.new_empty((run.batch_size, *fresh.shape[1:]))
                logits.index_copy_(0, rows, fresh)
            # log((1 - alpha_s) / (alpha_s - alpha_t)): the token columns hold log p(v | x) only
            log_stay = math.log(1 - alpha_s) - math.log(alpha_s - alpha_t) if alpha_s < 1 else -math.inf
            log_probs = run.log_probs(logits[row, position], position, row)
            drawn = run.draw_as_is(_with_stay_column(log_probs, log_stay, mask_id), position, row)
            previous = x.clone()
            probs = None  # of the tokens drawn (a drawn mask id, staying masked, rewrites a mask)
            if run.keeps_history:
                probs = log_probs.gather(1, drawn.clamp(max=log_probs.shape[1] - 1)[:, None])[:, 0].exp()
                probs = probs.masked_fill(drawn == mask_id, math.nan)
            run.fill(x, position, drawn, row, probs=probs)
            run.end_step(x)
            stale = (x != previous).any(1)
            bar.update()
    if noise_removal:
        _fill_most_likely(run, x, final_time)
    return run.result(x)


def _fill_most_likely(run: Run, x: Tensor, t: float) -> None:
    """MDLM's noise removal: every masked position takes its most likely token at time t."""
    masked = x == run.mask_id
    rows = masked.any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    logits = run.network(x.index_select(0, rows), rows,
                         t=torch.full((rows.numel(),), t, dtype=torch.float64, device=x.device))
    row, position = masked.index_select(0, rows).nonzero(as_tuple=True)
    sequence = rows[row]
    tokens = run.log_probs(logits[row, position], position, sequence).argmax(-1)
    run.fill(x, position, tokens, sequence)
    run.end_step(x)
