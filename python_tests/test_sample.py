"""Sampler behaviour: templates kept, counts as specified, counters, options, determinism, the
autoregressive sampler's law, bad input. Exactness in distribution: test_sample_exactness.py."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import chisquare_pvalue
from mdm_ext import sample
from mdm_ext.denoiser import Denoiser
from mdm_ext.language import MarkovLanguage
from mdm_ext.models import Transformer, TransformerConfig

ALPHA = 1e-4
LANGUAGE = MarkovLanguage.random(12, seed=0)
MASK = LANGUAGE.mask_id


class Recorder:
    """The Markov oracle, recording the masked count of every sequence at each call."""

    accepts_positions = True

    def __init__(self, language: MarkovLanguage = LANGUAGE):
        self.language = language
        self.masked_counts: list[Tensor] = []

    def __call__(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        self.masked_counts.append((x == MASK).sum(1))
        return self.language(x, positions)


SAMPLERS = {
    "first_hitting": lambda d, **kw: sample.first_hitting(d, **kw),
    "parallel_3": lambda d, **kw: sample.first_hitting(d, tokens_per_step=3, **kw),
    "order_2": lambda d, **kw: sample.first_hitting(d, tokens_per_step=3, order=2, **kw),
    "pc": lambda d, **kw: sample.first_hitting(d, tokens_per_step=3, order="pc", **kw),
    "ancestral": lambda d, **kw: sample.ancestral(d, steps=40, **kw),
    "ancestral_uncached": lambda d, **kw: sample.ancestral(d, steps=40, cache=False, **kw),
    "ancestral_linear": lambda d, **kw: sample.ancestral(d, steps=40, schedule="alpha_linear", **kw),
    "confidence": lambda d, **kw: sample.confidence(d, steps=6, block_length=4, **kw),
    "confidence_random": lambda d, **kw: sample.confidence(d, steps=10, remasking="random", **kw),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_template_positions_never_change_and_all_unmask(name):
    template = torch.tensor([[3, MASK, 5, MASK, MASK, 1, MASK, 0, MASK, MASK, MASK],
                             [MASK, 2, MASK, MASK, MASK, MASK, MASK, 7, 7, MASK, MASK]])
    result = SAMPLERS[name](LANGUAGE, batch_size=2, length=13, mask_id=MASK, prefix=template, seed=0)
    fixed = template != MASK
    assert result.tokens.shape == (2, 13)
    assert torch.equal(result.tokens[:, :11][fixed], template[fixed])
    assert (result.tokens != MASK).all()
    assert result.seconds > 0


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_tokens(name):
    runs = [SAMPLERS[name](LANGUAGE, batch_size=3, length=10, mask_id=MASK, seed=seed) for seed in (5, 5, 6)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert not torch.equal(runs[0].tokens, runs[2].tokens)


def test_seed_none_follows_torch_manual_seed():
    tokens = []
    for _ in range(2):
        torch.manual_seed(11)
        tokens.append(sample.first_hitting(LANGUAGE, batch_size=2, length=8, mask_id=MASK).tokens)
    assert torch.equal(*tokens)


@pytest.mark.parametrize("tokens_per_step, expected", [
    (1, list(range(10, 0, -1))),
    (3, [10, 7, 4, 1]),  # 3 does not divide 10: the last step takes the one left
    ([4, 1, 5], [10, 6, 5]),
])
def test_first_hitting_unmasks_as_specified(tokens_per_step, expected):
    recorder = Recorder()
    result = sample.first_hitting(recorder, batch_size=4, length=10, mask_id=MASK,
                                  tokens_per_step=tokens_per_step, seed=1)
    assert [counts.tolist() for counts in recorder.masked_counts] == [[n] * 4 for n in expected]
    assert result.nfe == len(expected)
    assert result.categorical_draws == 4 * 10


def test_first_hitting_asynchronous_rows_drop_out_when_done():
    recorder = Recorder()
    template = torch.tensor([[MASK] * 6, [1, 2, 3, 4, MASK, MASK]])
    sample.first_hitting(recorder, batch_size=2, length=6, mask_id=MASK, prefix=template, seed=0)
    assert [counts.tolist() for counts in recorder.masked_counts] == [[6, 2], [5, 1], [4], [3], [2], [1]]


class HostReads(TorchDispatchMode):
    """Counts the ops that, on a GPU, make the host wait for the device: reads of a value
    (item, int(), bool()) and outputs sized by values (nonzero, boolean indexing)."""

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default)
    INDEXING = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default)

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS or (func in self.INDEXING and any(
                index is not None and index.dtype == torch.bool for index in args[1])):
            self.count += 1
        return func(*args, **(kwargs or {}))


def host_reads(run, length: int) -> int:
    with HostReads() as reads:
        run(length)
    return reads.count


BACKBONE = Transformer(TransformerConfig.preset("tiny", vocab_size=MASK + 1, max_len=64)).eval()
UNEVEN = torch.tensor([[1, MASK, 2, MASK, MASK], [MASK, 3, 4, 5, 6]])  # rows finish apart
STEADY = {
    "exact": dict(),
    "exact_timed_prefix": dict(denoiser=Denoiser(lambda x, t: BACKBONE(x), needs_time=True), prefix=UNEVEN),
    "parallel_3_prefix": dict(tokens_per_step=3, prefix=UNEVEN),
    "order_2_prefix": dict(tokens_per_step=3, order=2, prefix=UNEVEN),
    "pc_prefix": dict(tokens_per_step=3, order="pc", prefix=UNEVEN),
}


@pytest.mark.parametrize("name", STEADY)
def test_first_hitting_steps_read_nothing_back(name):
    """The reads a run makes do not grow with its steps (on CUDA, each draw adds one: its error
    check, inside the kernel's op)."""
    options = {"denoiser": BACKBONE, **STEADY[name]}

    def run(length):
        return sample.first_hitting(options["denoiser"], batch_size=2, length=length, mask_id=MASK, seed=0,
                                    **{k: v for k, v in options.items() if k != "denoiser"})
    assert host_reads(run, 8) == host_reads(run, 40)


def test_host_read_count_catches_a_per_step_read():
    def run(length):
        return sample.ancestral(BACKBONE, batch_size=2, length=length, mask_id=MASK, steps=length, seed=0)
    assert host_reads(run, 40) > host_reads(run, 8) + 32


def test_predictor_corrector_splits_each_row_in_halves():
    """Rows unmasking 4 and 2 tokens in a step: the corrector call sees 2 and 1 of them left."""
    recorder = Recorder()
    template = torch.tensor([[MASK] * 6, [1, 2, 3, 4, MASK, MASK]])
    sample.first_hitting(recorder, batch_size=2, length=6, mask_id=MASK, prefix=template, tokens_per_step=4,
                         order="pc", seed=0)
    assert [counts.tolist() for counts in recorder.masked_counts] == [[6, 2], [4, 1], [2], [1]]


def test_predictor_corrector_corrects_the_second_half_of_each_row_in_position_order():
    """Rows unmasking 4 and 2 tokens: the predictor fills each row's first ceil(c / 2) chosen
    positions (the lowest), the corrector call asks for the others and fills them."""
    calls = []

    class PositionRecorder:
        accepts_positions = True

        def __call__(self, x, positions=None):
            calls.append((x.clone(), positions.clone()))
            return LANGUAGE(x, positions)

    template = torch.tensor([[MASK] * 6, [1, 2, 3, 4, MASK, MASK]])
    result = sample.first_hitting(PositionRecorder(), batch_size=2, length=6, mask_id=MASK, prefix=template,
                                  tokens_per_step=4, order="predictor_corrector", seed=3)
    (x0, predictor_positions), (x1, corrector_positions) = calls[:2]
    x2 = torch.stack([calls[2][0][0], result.tokens[1]])  # after the step (row 1 is then done)
    for row, count in enumerate([4, 2]):
        first = set((x1[row] != x0[row]).nonzero().flatten().tolist())
        second = set((x2[row] != x1[row]).nonzero().flatten().tolist())
        assert len(first) == (count + 1) // 2 and len(second) == count // 2
        assert max(first) < min(second)  # the lower positions are predicted
        assert first | second <= set(predictor_positions[row].tolist())
        assert second == set(corrector_positions[row, :count // 2].tolist())
    assert (result.tokens != MASK).all()


def test_count_schedule_must_cover_the_masks():
    with pytest.raises(ValueError, match="tokens_per_step covers 2 steps"):
        sample.first_hitting(LANGUAGE, batch_size=1, length=10, mask_id=MASK, tokens_per_step=[4, 5], seed=0)


def test_predictor_corrector_costs_one_extra_call_per_step():
    result = sample.first_hitting(LANGUAGE, batch_size=2, length=12, mask_id=MASK, tokens_per_step=4,
                                  order="pc", seed=0)
    assert result.nfe == 2 * 3
    second_order = sample.first_hitting(LANGUAGE, batch_size=2, length=12, mask_id=MASK, tokens_per_step=4,
                                        order=2, seed=0)
    assert second_order.nfe == 3


def test_ancestral_cache_changes_calls_not_samples():
    cached = sample.ancestral(LANGUAGE, batch_size=4, length=8, mask_id=MASK, steps=50, seed=3)
    uncached = sample.ancestral(LANGUAGE, batch_size=4, length=8, mask_id=MASK, steps=50, seed=3, cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.nfe < uncached.nfe <= 50  # uncached: every step while tokens are masked
    assert cached.nfe <= 1 + 4 * 8  # the first call, then only after steps that unmasked a token


def test_ancestral_per_sequence_cache_evaluates_changed_sequences_only():
    recorder = Recorder()
    sample.ancestral(recorder, batch_size=6, length=5, mask_id=MASK, steps=200, seed=4)
    evaluated = sum(len(counts) for counts in recorder.masked_counts)
    assert evaluated <= 6 * 5  # at most once per sequence per unmasking step


def test_time_conditioned_network_gets_each_sequence_time():
    times = []

    def timed(x: Tensor, t: Tensor) -> Tensor:
        times.append(t.clone())
        return LANGUAGE(x)

    sample.first_hitting(Denoiser(timed, needs_time=True), batch_size=3, length=5, mask_id=MASK, seed=2)
    stacked = torch.stack(times)  # [5 calls, 3 sequences]
    assert (stacked[1:] < stacked[:-1]).all() and (stacked > 0).all() and (stacked < 1).all()
    assert not torch.equal(stacked[:, 0], stacked[:, 1])  # asynchronous times


def test_top_k_one_and_temperature_zero_are_greedy():
    greedy = sample.first_hitting(LANGUAGE, batch_size=3, length=6, mask_id=MASK, temperature=0.0, seed=0)
    top_one = sample.first_hitting(LANGUAGE, batch_size=3, length=6, mask_id=MASK, top_k=1, seed=0)
    tiny_p = sample.first_hitting(LANGUAGE, batch_size=3, length=6, mask_id=MASK, top_p=1e-9, seed=0)
    assert torch.equal(greedy.tokens, top_one.tokens) and torch.equal(greedy.tokens, tiny_p.tokens)


def test_top_k_restricts_the_first_token():
    result = sample.first_hitting(LANGUAGE, batch_size=2000, length=1, mask_id=MASK, top_k=3, seed=0)
    top3 = LANGUAGE.stationary.topk(3).indices
    assert torch.isin(result.tokens, top3).all()
    expected = torch.zeros(LANGUAGE.vocab_size, dtype=torch.float64)
    expected[top3] = LANGUAGE.stationary[top3] / LANGUAGE.stationary[top3].sum()
    assert chisquare_pvalue(result.tokens, expected) > ALPHA


def test_mask_column_absent_from_the_network_output():
    """A network emitting only the K real tokens (mask id = K, outside its logits) works too."""
    def real_tokens_only(x: Tensor) -> Tensor:
        return LANGUAGE(x)[..., :MASK]

    for sampler in ("first_hitting", "ancestral", "confidence"):
        result = SAMPLERS[sampler](real_tokens_only, batch_size=2, length=6, mask_id=MASK, seed=0)
        assert (result.tokens < MASK).all()


def test_transformer_backbone_positions_path_matches_full_path():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=MASK + 1, max_len=16)).eval()
    full = sample.first_hitting(lambda x: model(x), batch_size=2, length=16, mask_id=MASK, seed=9)
    heads_only = sample.first_hitting(model, batch_size=2, length=16, mask_id=MASK, seed=9)
    assert torch.equal(full.tokens, heads_only.tokens)


class MarkovAR:
    """The language as an autoregressive model over ids 0..K (K = BOS): logits at position i
    are log p(x_{i+1} | x_i)."""

    def __call__(self, x: Tensor) -> Tensor:
        rows = torch.cat([LANGUAGE.transition, LANGUAGE.stationary[None]]).log()
        return torch.cat([rows[x], torch.full((*x.shape, 1), -math.inf, dtype=rows.dtype)], -1)


def test_autoregressive_reproduces_the_language():
    length = 3
    result = sample.autoregressive(MarkovAR(), batch_size=200_000, length=length, bos_id=MASK, seed=0)
    assert result.nfe == length and (result.tokens < MASK).all()
    sequences = torch.tensor(list(itertools.product(range(LANGUAGE.vocab_size), repeat=length)))
    probs = LANGUAGE.log_likelihood(sequences).exp()
    codes = (result.tokens * LANGUAGE.vocab_size ** torch.arange(length - 1, -1, -1)).sum(1)
    assert chisquare_pvalue(codes, probs) > ALPHA


def test_autoregressive_keeps_the_prefix_and_uses_positions():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=MASK + 1, max_len=12, causal=True)).eval()
    prefix = torch.tensor([4, 2, 7])
    result = sample.autoregressive(model, batch_size=3, length=10, bos_id=MASK, prefix=prefix, seed=0)
    assert (result.tokens[:, :3] == prefix).all() and result.nfe == 7
    full = sample.autoregressive(lambda x: model(x), batch_size=3, length=10, bos_id=MASK, prefix=prefix, seed=0)
    assert torch.equal(result.tokens, full.tokens)


BAD = {
    "temperature": (ValueError, "temperature", dict(temperature=-1.0)),
    "temperature_nan": (ValueError, "temperature", dict(temperature=math.nan)),
    "top_p": (ValueError, "top_p", dict(top_p=0.0)),
    "top_k": (ValueError, "top_k", dict(top_k=0)),
    "seed": (ValueError, "seed", dict(seed=-1)),
    "batch_size": (ValueError, "batch_size", dict(batch_size=0)),
    "length": (ValueError, "length", dict(length=0)),
    "mask_id": (ValueError, "mask_id", dict(mask_id=-1)),
    "prefix_dtype": (TypeError, "prefix", dict(prefix=torch.ones(3))),
    "prefix_long": (ValueError, "prefix", dict(prefix=torch.ones(9, dtype=torch.long))),
    "prefix_rows": (ValueError, "prefix", dict(prefix=torch.ones(5, 2, dtype=torch.long))),
    "prefix_id": (ValueError, "id", dict(prefix=torch.tensor([40]))),
    "order": (ValueError, "order", dict(order=3)),
    "order_bool": (ValueError, "order", dict(order=True)),
    "order_float": (ValueError, "order", dict(order=2.0)),
    "tokens_per_step": (ValueError, "tokens_per_step", dict(tokens_per_step=0)),
    "tokens_per_step_float": (TypeError, "tokens_per_step", dict(tokens_per_step=2.5)),
    "tokens_per_step_entries": (TypeError, "tokens_per_step", dict(tokens_per_step=[1.7, 2.2])),
    "tokens_per_step_str": (TypeError, "tokens_per_step", dict(tokens_per_step="3")),
    "tokens_per_step_bool_tensor": (TypeError, "tokens_per_step", dict(tokens_per_step=torch.tensor(True))),
    "seed_float": (TypeError, "seed", dict(seed=1.5)),
    "temperature_none": (TypeError, "temperature", dict(temperature=None)),
    "top_k_float": (TypeError, "top_k", dict(top_k=2.0)),
    "batch_size_float": (TypeError, "batch_size", dict(batch_size=2.0)),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_named(name):
    error, pattern, overrides = BAD[name]
    options = {**dict(batch_size=2, length=8, mask_id=MASK, seed=0), **overrides}
    with pytest.raises(error, match=pattern):
        sample.first_hitting(LANGUAGE, **options)


def test_numpy_and_tensor_integers_are_integers():
    counts = dict(batch_size=np.int64(2), length=torch.tensor(6), mask_id=np.int32(MASK), seed=np.uint8(1))
    first = sample.first_hitting(LANGUAGE, tokens_per_step=np.int64(2), order=np.int64(2), **counts)
    assert first.tokens.shape == (2, 6) and first.nfe == 3
    schedule = sample.first_hitting(LANGUAGE, tokens_per_step=np.array([4, 2]), temperature=torch.tensor(0.5),
                                    **counts)
    assert schedule.nfe == 2
    assert sample.ancestral(LANGUAGE, steps=np.int64(5), **counts).tokens.shape == (2, 6)


def test_a_network_that_declares_its_ids_is_checked_before_it_runs():
    network = Transformer(TransformerConfig.preset("tiny", vocab_size=MASK + 1, max_len=16)).eval()
    with pytest.raises(ValueError, match=r"prefix must hold token ids in \[0, 13\)"):
        sample.first_hitting(network, batch_size=1, length=8, mask_id=MASK, prefix=torch.tensor([40]))
    with pytest.raises(ValueError, match="mask_id = 50 is not an id the network takes"):
        sample.first_hitting(network, batch_size=1, length=8, mask_id=50)


def test_prefix_ids_between_the_logits_and_the_mask_id_are_rejected():
    def network(x):  # 6 token logits, the mask id 9 beyond them
        return torch.zeros(*x.shape, 6)
    with pytest.raises(ValueError, match="prefix holds id 7"):
        sample.first_hitting(network, batch_size=1, length=4, mask_id=9, prefix=torch.tensor([7]))
    assert sample.first_hitting(network, batch_size=1, length=4, mask_id=9, prefix=torch.tensor([5, 9])).nfe == 3


@pytest.mark.parametrize("name", ["ancestral", "pc", "confidence"])
def test_tiny_temperatures_are_greedy_without_overflow(name):
    """Scores are taken relative to the row maximum before dividing by the temperature, so
    1e-300 puts all the mass on the argmax, as temperature 0 does, and top_k changes nothing."""
    runs = [SAMPLERS[name](LANGUAGE, batch_size=3, length=9, mask_id=MASK, seed=4, temperature=temperature,
                           top_k=top_k) for temperature, top_k in ((0.0, None), (1e-300, None), (1e-300, 3))]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and torch.equal(runs[0].tokens, runs[2].tokens)


def test_progress_bar_reports_on_request(capsys):
    sample.first_hitting(LANGUAGE, batch_size=2, length=6, mask_id=MASK, seed=0)
    assert capsys.readouterr().err == ""
    sample.first_hitting(LANGUAGE, batch_size=2, length=6, mask_id=MASK, seed=0, progress=True)
    assert "0/12 [" in capsys.readouterr().err  # a bar over the 12 masked tokens


def test_bad_steps_and_shapes():
    with pytest.raises(ValueError, match="steps"):
        sample.ancestral(LANGUAGE, batch_size=1, length=4, mask_id=MASK, steps=0)
    with pytest.raises(ValueError, match="schedule"):
        sample.ancestral(LANGUAGE, batch_size=1, length=4, mask_id=MASK, steps=4, schedule="square")
    with pytest.raises(ValueError, match="remasking"):
        sample.confidence(LANGUAGE, batch_size=1, length=4, mask_id=MASK, steps=4, remasking="top")
    with pytest.raises(ValueError, match="steps"):
        sample.confidence(LANGUAGE, batch_size=1, length=8, mask_id=MASK, steps=1, block_length=4)
    with pytest.raises(ValueError, match="logits of shape"):
        sample.first_hitting(lambda x: torch.zeros(x.shape[0], 13), batch_size=1, length=4, mask_id=MASK)
    with pytest.raises(ValueError, match="t is required"):
        Denoiser(lambda x, t: LANGUAGE(x), needs_time=True)(torch.full((1, 3), MASK))


def test_confidence_keeps_the_most_confident_tokens():
    """One token kept per step at temperature 0: positions unmask in decreasing order of the
    probability of their drawn token, and each block finishes before the next starts."""
    length, vocab = 6, 4
    top_prob = torch.tensor([0.3, 0.9, 0.5, 0.7, 0.4, 0.8])  # of token 0, per position
    inputs = []

    def network(x: torch.Tensor) -> torch.Tensor:
        inputs.append(x.clone())
        probs = torch.zeros(*x.shape, vocab + 1)
        probs[..., 0] = top_prob
        probs[..., 1:vocab] = ((1 - top_prob) / (vocab - 1))[:, None]
        return probs.log()

    def unmask_order(**options) -> list[int]:
        inputs.clear()
        result = sample.confidence(network, batch_size=2, length=length, mask_id=vocab, steps=length,
                                   temperature=0, seed=0, **options)
        inputs.append(result.tokens)
        newly = [int((after[0] != vocab).logical_and(before[0] == vocab).nonzero()) for before, after in
                 zip(inputs, inputs[1:])]
        assert all(torch.equal(x[0], x[1]) for x in inputs)
        return newly

    assert unmask_order() == [1, 5, 3, 2, 4, 0]
    assert unmask_order(block_length=3) == [1, 2, 0, 5, 3, 4]
