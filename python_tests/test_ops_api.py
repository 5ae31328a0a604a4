"""The ops as PyTorch sees them (opcheck, torch.compile) and how they refuse bad input."""
import math
from functools import partial

import pytest
import torch
from torch.library import opcheck

from conftest import random_logits, seeded
from mdm_ext import ops

OPS = torch.ops.mdm_ext
SAMPLE = OPS.sample_categorical.default
LOGITS_KIND, PROBS_KIND = 0, 1  # the score kinds of sample_categorical


def opcheck_samples() -> dict[str, tuple[torch._ops.OpOverload, tuple]]:
    """Sample calls of every op, backward ops included; random ops get explicit seeds, so that
    their outputs are deterministic."""
    log_softmax, cross_entropy = OPS.masked_log_softmax.default, OPS.masked_cross_entropy.default
    logits = random_logits((3, 7)).requires_grad_()
    logits64 = random_logits((2, 3, 50), torch.float64).requires_grad_()
    half = random_logits((5, 6), torch.float16)
    target = torch.tensor([1, 6, 0])
    weight = torch.rand(3, generator=seeded(1))
    _, lse = cross_entropy(logits.detach(), target, weight, 2, -100)
    grad_loss = torch.rand(3, generator=seeded(3))
    times = torch.rand(3, generator=seeded(5), dtype=torch.float64)
    return {
        "sample_logits": (SAMPLE, (logits.detach(), LOGITS_KIND, 1.0, -1, 1, 0, False)),
        "sample_tempered": (SAMPLE, (logits64.detach(), LOGITS_KIND, 0.7, 2, 5, 9, False)),
        "sample_transposed": (SAMPLE, (random_logits((7, 3)).t(), LOGITS_KIND, 1.3, 0, 2, 1, False)),
        "sample_argmax": (SAMPLE, (half.bfloat16(), LOGITS_KIND, 0.0, -1, 1, 1, False)),
        "sample_probs": (SAMPLE, (torch.rand(4, 300, generator=seeded(2)), PROBS_KIND, 1.0, -1, 3, 2, False)),
        "sample_tiny_temperature": (SAMPLE, (logits64.detach(), LOGITS_KIND, 5e-324, -1, 4, 3, False)),
        "sample_largest_probs": (SAMPLE, (torch.full((2, 300), 1.7e308, dtype=torch.float64), PROBS_KIND, 1.0, -1,
                                          3, 2, False)),
        "sample_legacy": (SAMPLE, (half, LOGITS_KIND, 0.5, 1, 7, 0, True)),
        "log_softmax": (log_softmax, (logits, 2)),
        "log_softmax_float64": (log_softmax, (logits64, 0)),
        "log_softmax_half": (log_softmax, (half.clone().requires_grad_(), 4)),
        "log_softmax_backward": (OPS.masked_log_softmax_backward.default,
                                 (random_logits((3, 7), seed=2), log_softmax(logits.detach(), 2), 2)),
        "cross_entropy": (cross_entropy, (logits, target, weight, 2, -100)),
        "cross_entropy_ignore": (cross_entropy,
                                 (logits64, torch.tensor([[1, -100, 3], [9, 49, -100]]), None, 0, -100)),
        "cross_entropy_bfloat16": (cross_entropy,
                                   (logits.detach().bfloat16().requires_grad_(), target, weight, 2, 6)),
        "cross_entropy_backward": (OPS.masked_cross_entropy_backward.default,
                                   (grad_loss, logits.detach(), target, weight, lse, 2, -100)),
        "first_hit_times": (OPS.first_hit_times.default,
                            (torch.rand(4, generator=seeded(4)), torch.tensor([0, 1, 5, 2]), "alpha_linear",
                             [0.0, 0.0], 1, 2)),
        "first_hit_times_cosine": (OPS.first_hit_times.default,
                                   (times, torch.tensor([3, 1, 8]), "cosine", [1e-3, 0.0], 4, 0)),
        "first_hit_times_geometric": (OPS.first_hit_times.default,
                                      (times, torch.tensor([3, 1, 8]), "geometric", [1e-3, 1.0], 4, 0)),
        "choose_masked": (OPS.choose_masked.default,
                          (torch.tensor([[1, 9, 9, 4], [9, 2, 9, 9]]), 9, torch.tensor([1, 2]), 1, 2)),
    }


SAMPLES = opcheck_samples()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_opcheck(name):
    op, args = SAMPLES[name]
    opcheck(op, args)


def test_compiles_without_graph_breaks():
    """One fullgraph-compiled sampling-and-loss step gives the eager results."""
    def step(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = ops.gumbel_argmax(logits.detach(), temperature=0.7, exclude=1, seed=3, offset=4)
        return tokens, ops.masked_cross_entropy(logits, target, 1, reduction="mean")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    target = torch.tensor([0, 2, 3, -100])
    results = []
    for fn in (step, compiled):
        logits = random_logits((4, 6)).requires_grad_()
        tokens, loss = fn(logits, target)
        loss.backward()
        results.append((tokens, loss, logits.grad))
    for eager, from_graph in zip(*results):
        assert torch.equal(eager, from_graph)


LOGITS = random_logits((3, 5))
PROBS = torch.rand(3, 5, generator=seeded(1)) + 0.1
TARGET = torch.tensor([0, 1, 2])
T, N_MASKED = torch.tensor([0.5]), torch.tensor([2])
gumbel = partial(ops.gumbel_argmax, seed=0)
categorical = partial(ops.categorical, seed=0)
cross_entropy = ops.masked_cross_entropy
first_hit = partial(ops.first_hit_times, seed=0)
choose = partial(ops.choose_masked, seed=0)


def with_entry(tensor: torch.Tensor, row: int, column: int, value: float) -> torch.Tensor:
    changed = tensor.clone()
    changed[row, column] = value
    return changed


def with_row(tensor: torch.Tensor, row: int, value: float, keep: int = -1) -> torch.Tensor:
    """tensor with row `row` set to `value`, except column `keep` (none when -1)."""
    changed = tensor.clone()
    changed[row, [c for c in range(tensor.shape[1]) if c != keep]] = value
    return changed


# name -> (exception, pattern its message must contain: the argument at fault, the bad call)
BAD_CALLS = {
    "logits_integer": (TypeError, "logits", lambda: gumbel(LOGITS.long())),
    "logits_list": (TypeError, "logits", lambda: gumbel([1.0, 2.0])),
    "logits_V_0": (ValueError, "logits", lambda: gumbel(torch.ones(3, 0))),
    "logits_0_dim": (ValueError, "logits", lambda: gumbel(torch.tensor(1.0))),
    "logits_meta": (ValueError, "meta", lambda: gumbel(LOGITS.to("meta"))),
    "exclude_V": (ValueError, "exclude", lambda: gumbel(LOGITS, exclude=5)),
    "exclude_negative": (ValueError, "exclude", lambda: gumbel(LOGITS, exclude=-1)),
    "temperature_negative": (ValueError, "temperature", lambda: gumbel(LOGITS, temperature=-0.5)),
    "temperature_nan": (ValueError, "temperature", lambda: gumbel(LOGITS, temperature=math.nan)),
    "temperature_inf": (ValueError, "temperature", lambda: gumbel(LOGITS, temperature=math.inf)),
    "logits_nan": (ValueError, "logits row 1", lambda: gumbel(with_entry(LOGITS, 1, 2, math.nan))),
    "logits_nan_argmax": (ValueError, "logits row 1",
                          lambda: gumbel(with_entry(LOGITS, 1, 2, math.nan), temperature=0)),
    "logits_nan_legacy": (ValueError, "logits row 2",
                          lambda: gumbel(with_entry(LOGITS, 2, 0, math.nan), legacy_float32=True)),
    "logits_plus_inf": (ValueError, "logits row 2", lambda: gumbel(with_entry(LOGITS, 2, 4, math.inf))),
    "logits_none_left": (ValueError, "logits row 1",
                         lambda: gumbel(with_row(LOGITS, 1, -math.inf, keep=4), exclude=4)),
    "logits_half_none_left": (ValueError, "logits row 0",
                              lambda: gumbel(torch.full((2, 3), -math.inf, dtype=torch.float16))),
    "probs_negative": (ValueError, "probs row 1", lambda: categorical(with_entry(PROBS, 1, 1, -0.1))),
    "probs_nan": (ValueError, "probs row 0", lambda: categorical(with_entry(PROBS, 0, 1, math.nan))),
    "probs_inf": (ValueError, "probs row 2", lambda: categorical(with_entry(PROBS, 2, 3, math.inf))),
    "probs_all_zero": (ValueError, "probs row 2", lambda: categorical(with_row(PROBS, 2, 0.0))),
    "probs_all_zero_legacy": (ValueError, "probs row 1",
                              lambda: categorical(with_row(PROBS, 1, 0.0), legacy_float32=True)),
    "seed_negative": (ValueError, "seed", lambda: ops.categorical(PROBS, seed=-1)),
    "seed_2_63": (ValueError, "seed", lambda: ops.categorical(PROBS, seed=2**63)),
    "offset_negative": (ValueError, "offset", lambda: categorical(PROBS, offset=-1)),
    "offset_2_56": (ValueError, "offset", lambda: categorical(PROBS, offset=2**56)),
    "log_softmax_mask_id_V": (ValueError, "mask_id", lambda: ops.masked_log_softmax(LOGITS, 5)),
    "log_softmax_mask_id_negative": (ValueError, "mask_id", lambda: ops.masked_log_softmax(LOGITS, -1)),
    "log_softmax_integer": (TypeError, "logits", lambda: ops.masked_log_softmax(LOGITS.int(), 0)),
    "log_softmax_V_0": (ValueError, "logits", lambda: ops.masked_log_softmax(torch.ones(2, 0), 0)),
    "target_is_mask_id": (ValueError, "target", lambda: cross_entropy(LOGITS, TARGET, 2)),
    "target_V": (ValueError, "target", lambda: cross_entropy(LOGITS, torch.tensor([0, 5, 1]), 4)),
    "target_negative": (ValueError, "target", lambda: cross_entropy(LOGITS, torch.tensor([0, -3, 1]), 4)),
    "target_int32": (TypeError, "target", lambda: cross_entropy(LOGITS, TARGET.int(), 4)),
    "target_shape": (ValueError, "target", lambda: cross_entropy(LOGITS, TARGET[:2], 4)),
    "target_meta": (ValueError, "target on meta", lambda: cross_entropy(LOGITS, TARGET.to("meta"), 4)),
    "cross_entropy_mask_id_V": (ValueError, "mask_id", lambda: cross_entropy(LOGITS, TARGET, 5)),
    "weight_meta": (ValueError, "weight on meta",
                    lambda: cross_entropy(LOGITS, TARGET, 4, weight=torch.ones(3, device="meta"))),
    "weight_shape": (ValueError, "weight", lambda: cross_entropy(LOGITS, TARGET, 4, weight=torch.ones(2))),
    "weight_float": (TypeError, "weight", lambda: cross_entropy(LOGITS, TARGET, 4, weight=0.5)),
    "reduction": (ValueError, "reduction", lambda: cross_entropy(LOGITS, TARGET, 4, reduction="avg")),
    "t_integer": (TypeError, "^t must", lambda: first_hit(torch.tensor([1]), N_MASKED)),
    "t_above_1": (ValueError, "^t must", lambda: first_hit(torch.tensor([1.5]), N_MASKED)),
    "t_nan": (ValueError, "^t must", lambda: first_hit(torch.tensor([math.nan]), N_MASKED)),
    "t_2_dims": (ValueError, "^t and n_masked", lambda: first_hit(T[None], N_MASKED[None])),
    "n_masked_float": (TypeError, "n_masked", lambda: first_hit(T, N_MASKED.double())),
    "n_masked_negative": (ValueError, "n_masked", lambda: first_hit(T, -N_MASKED)),
    "n_masked_shape": (ValueError, "n_masked", lambda: first_hit(T, N_MASKED.repeat(2))),
    "n_masked_meta": (ValueError, "n_masked on meta", lambda: first_hit(T, N_MASKED.to("meta"))),
    "schedule": (ValueError, "schedule", lambda: first_hit(T, N_MASKED, schedule="cos")),
    "x_int32": (TypeError, "^x must", lambda: choose(TARGET[None].int(), 2, 1)),
    "x_1_dim": (ValueError, "^x must", lambda: choose(TARGET, 2, 1)),
    "k_negative": (ValueError, "^k must", lambda: choose(TARGET[None], 2, -1)),
    "k_float": (TypeError, "^k must", lambda: choose(TARGET[None], 2, 1.5)),
    "k_bool": (TypeError, "^k must", lambda: choose(TARGET[None], 2, True)),
    "k_shape": (ValueError, "^k must", lambda: choose(TARGET[None], 2, torch.tensor([1, 2]))),
    "k_meta": (ValueError, "k on meta", lambda: choose(TARGET[None], 2, torch.tensor([1], device="meta"))),
    # The compiled ops check their arguments too, for callers of torch.ops.mdm_ext.
    "op_score_kind": (ValueError, "kind", lambda: SAMPLE(LOGITS, 7, 1.0, -1, 0, 0, False)),
    "op_temperature_on_probs": (ValueError, "temperature",
                                lambda: SAMPLE(PROBS, PROBS_KIND, 0.5, -1, 0, 0, False)),
    "op_exclude": (ValueError, "exclude", lambda: SAMPLE(LOGITS, LOGITS_KIND, 1.0, 9, 0, 0, False)),
    "op_seed": (ValueError, "seed", lambda: SAMPLE(LOGITS, LOGITS_KIND, 1.0, -1, -5, 0, False)),
    "op_mask_id": (ValueError, "mask_id", lambda: OPS.masked_log_softmax.default(LOGITS, 9)),
    "op_weight_dtype": (TypeError, "weight",
                        lambda: OPS.masked_cross_entropy.default(LOGITS, TARGET, TARGET.double(), 4, -100)),
    "op_schedule": (ValueError, "schedule", lambda: OPS.first_hit_times.default(T, N_MASKED, "cos", [0.0, 0.0], 0, 0)),
    "op_k_int32": (TypeError, "^k must",
                   lambda: OPS.choose_masked.default(TARGET[None], 2, N_MASKED.int(), 0, 0)),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_a_clear_error(name):
    error, pattern, call = BAD_CALLS[name]
    with pytest.raises(error, match=pattern):
        call()


def test_empty_batches_give_empty_results():
    empty_logits = random_logits((2, 0, 5))
    assert gumbel(empty_logits).shape == (2, 0)
    assert categorical(empty_logits.exp(), legacy_float32=True).shape == (2, 0)
    logits = random_logits((0, 5)).requires_grad_()
    assert ops.masked_log_softmax(logits, 1).shape == (0, 5)
    target = torch.zeros(0, dtype=torch.long)
    assert cross_entropy(logits, target, 1).shape == (0,)
    mean = cross_entropy(logits, target, 1, reduction="mean")
    mean.backward()
    assert float(mean.detach()) == 0 and logits.grad.shape == (0, 5)
    assert first_hit(torch.zeros(0), target).shape == (0,)
    assert choose(torch.zeros(0, 4, dtype=torch.long), 1, 2).shape == (0, 4)
    assert choose(torch.zeros(3, 0, dtype=torch.long), 1, 2).shape == (3, 0)


@pytest.mark.skipif(not torch.cuda.is_available() or ops.built_with_cuda(),
                    reason="needs a CUDA device and a build without the CUDA kernels")
def test_cuda_tensor_without_cuda_kernels_says_how_to_rebuild():
    with pytest.raises(RuntimeError, match="built without its CUDA kernels"):
        gumbel(LOGITS.cuda())
