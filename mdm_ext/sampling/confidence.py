"""Confidence-based decoding (low-confidence remasking) with semi-autoregressive blocks."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from .. import checks
from .options import SamplingOptions, resolve
from .prompts import Prompt
from .run import Run, SampleResult, model_log_probs

REMASKING = ("low_confidence", "random")


@torch.no_grad()
def confidence(
    denoiser: Callable[..., Any], *, length: int, mask_id: int, steps: int, batch_size: Optional[int] = None,
    block_length: Optional[int] = None, remasking: str = "low_confidence", prefix: Prompt = None,
    options: Optional[SamplingOptions] = None, **option_values: Any,
) -> SampleResult:
    """Confidence-based decoding as LLaDA-style models use it.

    Each row's generated positions (from its first masked position to ``length``) are filled in
    blocks of ``block_length`` from left to right (semi-autoregressive; one block by default),
    each block in an equal share of the row's ``steps``. At each step a token is drawn at every
    masked position of the row's block, and the tokens to keep, an even share of the block's
    masked count, are those whose drawn token is most probable under the network
    ("low_confidence": the least confident ones are remasked) or chosen at random ("random").
    Rows follow their own block schedules in lockstep (a row whose block is done waits, making
    no calls, until its next block's steps), so a row's tokens do not depend on the others'
    prompts. A time-conditioned network gets the masked fraction as its time.
    Options (temperature, top_k, top_p, min_p, exclude_ids, eos_id, seed, network_kwargs,
    callback, return_history, ...): :class:`~mdm_ext.sampling.SamplingOptions`.
    Returns tokens [B, length].
    """
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    length = checks.integer("length", length, minimum=1)
    block_length = checks.integer("block_length", length if block_length is None else block_length, minimum=1)
    steps = checks.integer("steps", steps)
    run = Run(denoiser, resolve(options, option_values, "confidence"), mask_id=mask_id)
    x = run.start(batch_size, length, prefix)
    schedule = _BlockSchedule(run.first_generated.tolist(), length, block_length, steps, x.device)
    column = torch.arange(length, device=x.device)
    block_of = (column - run.first_generated[:, None]).div(block_length, rounding_mode="floor")  # [B, L]
    with run.bar(steps, "step") as bar:
        for step in range(steps):
            block, steps_left = schedule.at(step)  # [B] each
            in_block = block_of == block[:, None]
            n_masked = ((x == mask_id) & in_block).sum(1)
            # an even share of what is left: all of it at the block's last step
            keep = -(-n_masked // steps_left)
            rows = (n_masked > 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                bar.update()
                continue
            x_rows, in_block, keep = x.index_select(0, rows), in_block.index_select(0, rows), keep.index_select(0, rows)
            masked = (x_rows == mask_id) & in_block
            if remasking == "random":
                # keeping a uniform subset is choosing it first: draw only there
                masked = run.choose(x_rows.masked_fill(~in_block, -1), keep, rows)
            logits = run.network(x_rows, rows, t=(x_rows == mask_id).double().mean(1))
            row, position = masked.nonzero(as_tuple=True)
            rows_logits = logits[row, position]
            sequence = rows[row]
            drawn, probs = run.draw(rows_logits, position, sequence)
            if remasking == "low_confidence":
                score = model_log_probs(rows_logits, mask_id).gather(1, drawn[:, None])[:, 0]
                confidence_map = torch.full((rows.numel(), length), -math.inf, dtype=score.dtype, device=x.device)
                confidence_map[row, position] = score
                rank = confidence_map.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                selected = (rank < keep[:, None])[row, position]
                sequence, position, drawn = sequence[selected], position[selected], drawn[selected]
                probs = None if probs is None else probs[selected]
            run.fill(x, position, drawn, sequence, probs=probs)
            run.end_step(x)
            bar.update()
    return run.result(x)


class _BlockSchedule:
    """Each row's block and the steps left in it at every step: row r splits its generated
    positions into n_r blocks, and ``steps`` into n_r shares (the first steps % n_r one longer)."""

    def __init__(self, first_generated: list[int], length: int, block_length: int, steps: int,
                 device: torch.device):
        blocks = [-(-(length - first) // block_length) for first in first_generated]
        if steps < max(blocks):
            raise ValueError(f"steps must be an int >= the number of blocks ({max(blocks)}), got {steps}")
        block_index, steps_left = [], []
        for n in blocks:
            shares = [steps // n + (b < steps % n) for b in range(n)] if n else [steps]
            block_index.append([b for b, share in enumerate(shares) for _ in range(share)])
            steps_left.append([share - i for share in shares for i in range(share)])
        self.block = torch.tensor(block_index, device=device).t()  # [steps, B]
        self.steps_left = torch.tensor(steps_left, device=device).t()

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block[step], self.steps_left[step]
