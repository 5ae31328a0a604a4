"""A strategy written as the package docstring says is one function on the shared Run: it gets
prompts, per-row conditioning, seeds, processors, EOS and history without writing them."""
import textwrap

import torch

import mdm_ext.sampling
from mdm_ext.sampling import Run, SampleResult, resolve
from sampler_cases import LANGUAGE, MASK
from test_sample_inputs import PROMPTS, RowChecker


def docstring_strategy():
    """The example of mdm_ext/sampling/__init__.py, executed as it stands."""
    text = mdm_ext.sampling.__doc__
    example = textwrap.dedent(text.split("::\n", 1)[1].split("\nWhat the run gives", 1)[0])
    namespace = dict(torch=torch, Run=Run, SampleResult=SampleResult, resolve=resolve)
    exec(compile(example, "mdm_ext.sampling docstring", "exec"), namespace)
    return namespace["my_strategy"]


def test_the_docstring_strategy_runs_with_the_shared_machinery():
    strategy = docstring_strategy()
    checker = RowChecker(PROMPTS, length=9)
    result = strategy(checker, length=9, mask_id=MASK, prefix=PROMPTS, seed=[1, 2, 3, 4], eos_id=0,
                      network_kwargs=checker.kwargs(), return_history=True, temperature=0.7, exclude_ids=[5])
    assert (result.tokens != MASK).all() and not bool((result.tokens[:, 6:] == 5).any())
    assert result.history.shape[1:] == (4, 9) and min(checker.batch_sizes) < 4
    alone = strategy(LANGUAGE, length=9, mask_id=MASK, prefix=PROMPTS[:1], seed=[1], eos_id=0,
                     temperature=0.7, exclude_ids=[5])
    assert torch.equal(alone.tokens[0], result.tokens[0])  # batch invariant with per-sequence seeds
