"""The sampler package: strategies on one shared machinery. ``mdm_ext.sample`` is its public face.

Layout:

- :mod:`.options`: :class:`SamplingOptions`, every option samplers share (temperature, top-k,
  top-p, min-p, excluded ids, EOS, seeds, per-row network kwargs, callback, history, ...).
- :mod:`.processors`: token shaping as small composable processors, and the fused kernel path.
- :mod:`.prompts`: prompts as users have them ([P], [1, P], [B, P], lists of any lengths).
- :mod:`.seeds`: one stream for the batch, or per-sequence seeds (batch invariance).
- :mod:`.run`: :class:`Run`, the context a strategy works through, and :class:`SampleResult`.
- one module per strategy: :mod:`.first_hitting`, :mod:`.ancestral`, :mod:`.confidence`,
  :mod:`.autoregressive`.

Adding a strategy is one module here, plus one line in ``mdm_ext/sample.py`` to export it.
This one unmasks one uniformly chosen position per sequence and step (exact first-hitting for a
time-agnostic network)::

    @torch.no_grad()
    def my_strategy(denoiser, *, length, mask_id, batch_size=None, prefix=None, options=None,
                    **option_values) -> SampleResult:
        run = Run(denoiser, resolve(options, option_values, "my_strategy"), mask_id=mask_id)
        x = run.start(batch_size, length, prefix)  # [B, L]; mask_id where to generate
        while True:
            rows = (x == mask_id).any(1).nonzero().squeeze(1)  # the sequences still generating
            if rows.numel() == 0:
                break
            x_rows = x.index_select(0, rows)
            position = run.choose(x_rows, 1, rows).int().argmax(1, keepdim=True)  # [b, 1]
            logits = run.network(x_rows, rows, positions=position)  # network_kwargs follow the rows
            tokens, probs = run.draw(logits, position, rows)  # shaped and seeded
            run.fill(x, position, tokens, rows, probs=probs)
            run.end_step(x)  # EOS fill, history, callback
        return run.result(x)

What the run gives a strategy, so that it writes none of it:

- ``run.network(x_rows, rows, t=, positions=, **call_kwargs)``: the call, counted (nfe), with
  the rows' slices of ``network_kwargs`` (and a strategy's own keywords, e.g. a KV cache);
  ``rows`` is None (all B) or an index tensor, and every method taking ``rows`` reads it the
  same way.
- ``run.draw(logits, positions, rows)``: tokens under the options' processors (the fused
  kernel path when possible) and their probabilities when history is kept;
  ``run.draw_as_is(scores, positions, rows, probabilities=False)`` for scores a strategy
  built itself; ``run.log_probs`` for the shaped distribution; ``run.choose(x, k)``,
  ``run.first_hit(t, n_masked, schedule)`` for positions and times. Each call is one random
  call: with per-sequence seeds a sequence's stream moves only with the calls it takes part
  in, so a strategy is batch invariant when a row's calls do not depend on the other rows.
- ``run.fill(x, positions, tokens, rows, valid=, probs=)`` writes; ``run.end_step(x)`` after
  every step applies EOS fill (then rows with nothing masked left must make no more calls),
  records history and calls the callback; ``run.bar``, ``run.result``.
- ``run.options``, ``run.mask_id``, ``run.denoiser`` (``needs_time``, ``accepts_positions``),
  ``run.generated`` ([B, L]: the positions the run decides), ``run.first_generated`` ([B]).

A strategy that cannot honour an option raises ValueError naming it (e.g. ``network_kwargs``
for a strategy that batches rows the caller did not pass).
"""
from .ancestral import ancestral
from .autoregressive import autoregressive
from .confidence import confidence
from .first_hitting import first_hitting
from .options import SamplingOptions, resolve
from .processors import Sites, TokenProcessor
from .run import Run, SampleResult

__all__ = ["SamplingOptions", "SampleResult", "Run", "Sites", "TokenProcessor", "resolve",
           "ancestral", "first_hitting", "confidence", "autoregressive"]
