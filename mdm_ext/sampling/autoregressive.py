"""Left-to-right sampling of a causal model: the baseline masked models are compared with."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .. import checks
from .options import SamplingOptions, resolve
from .prompts import Prompt, prompt_lengths
from .run import Run, SampleResult


@torch.no_grad()
def autoregressive(
    model: Callable[..., Any], *, length: int, bos_id: int, batch_size: Optional[int] = None,
    prefix: Prompt = None, options: Optional[SamplingOptions] = None, **option_values: Any,
) -> SampleResult:
    """Left-to-right sampling of a causal model (logits at position i predict token i + 1),
    fed ``[bos_id, prefix..., drawn...]``; ``bos_id`` is never drawn. A model with
    ``accepts_positions`` pays its output head at the last position only. Prompts must share
    one length. With ``eos_id`` a row that drew EOS is done (EOS to the end, no more calls).
    Options: :class:`~mdm_ext.sampling.SamplingOptions`.
    Returns tokens [B, length], without the BOS token.
    """
    checks.integer("bos_id", bos_id, minimum=0)
    run = Run(model, resolve(options, option_values, "autoregressive"), mask_id=bos_id)
    tokens = run.start(batch_size, length, prefix)
    lengths = prompt_lengths(prefix, tokens.shape[0])
    in_prompt = torch.arange(length, device=tokens.device) < torch.tensor(lengths, device=tokens.device)[:, None]
    if bool(((tokens == bos_id) & in_prompt).any()):
        raise ValueError("prefix must not contain bos_id")
    if len(set(lengths)) > 1:
        raise ValueError(f"autoregressive needs prompts of one length, got lengths {sorted(set(lengths))}")
    fixed = lengths[0]
    eos = run.options.eos_id is not None
    batch = tokens.shape[0]
    bos = torch.full((batch, 1), bos_id, dtype=torch.long, device=tokens.device)
    active = None  # rows still drawing (None: all)
    with run.bar(length - fixed, "token") as bar:
        for position in range(fixed, length):
            x = torch.cat([bos, tokens[:, :position]], dim=1)
            rows_x = x if active is None else x.index_select(0, active)
            last = torch.full((rows_x.shape[0], 1), position, dtype=torch.long, device=x.device)
            logits = run.network(rows_x, active, positions=last)
            drawn, probs = run.draw(logits, last, active)  # x[:, position] predicts tokens[:, position]
            run.fill(tokens, last, drawn, active, probs=probs)
            run.end_step(tokens)
            bar.update()
            if eos:  # one read a step: which rows are done
                done = (tokens[:, position] == run.options.eos_id)
                if bool(done.all()):
                    break
                active = (~done).nonzero().squeeze(1) if bool(done.any()) else None
    return run.result(tokens)
