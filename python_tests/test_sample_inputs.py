"""What users bring to a sampler: prompts of every shape, per-row conditioning, EOS, history and
callbacks, token processors, and the errors that name a wrong argument."""
import dataclasses
import math
import warnings

import pytest
import torch
from torch import Tensor

from conftest import chisquare_pvalue
from mdm_ext import reference, sample
from mdm_ext.denoiser import Denoiser
from mdm_ext.models import Transformer, TransformerConfig
from mdm_ext.sampling import SamplingOptions
from mdm_ext.sampling.processors import TokenShaping
from sampler_cases import LANGUAGE, MASK, SAMPLERS, MarkovAR

ALPHA = 1e-4
EOS = 0
# ragged prompts: the rows finish at different steps
PROMPTS = [torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([7]), torch.tensor([], dtype=torch.long),
           torch.tensor([3, 9, 3])]


class RowChecker:
    """The oracle, asserting at every call that each row's conditioning is its own: row_id [b]
    names the row, attention_mask [b, L] holds 100 * row + position, and the row's prompt
    stands in its first positions. It also asserts that every row still has something masked."""

    accepts_positions = True

    def __init__(self, prompts, length):
        self.prompts, self.length = prompts, length
        self.batch_sizes = []

    def kwargs(self):
        rows = len(self.prompts)
        return dict(row_id=torch.arange(rows), attention_mask=100 * torch.arange(rows)[:, None]
                    + torch.arange(self.length), scale=1.0)

    def __call__(self, x, positions=None, *, row_id, attention_mask, scale, t=None):
        assert x.shape[0] == row_id.shape[0] == attention_mask.shape[0] and scale == 1.0
        for i, row in enumerate(row_id.tolist()):
            assert torch.equal(attention_mask[i], 100 * row + torch.arange(self.length))
            prompt = self.prompts[row]
            assert torch.equal(x[i, : len(prompt)], prompt)
        assert bool((x == MASK).any(1).all()), "a row with nothing masked was called"
        self.batch_sizes.append(x.shape[0])
        return LANGUAGE(x, positions)


@pytest.mark.parametrize("name", SAMPLERS)
def test_network_kwargs_travel_with_their_rows(name):
    checker = RowChecker(PROMPTS, length=9)
    result = SAMPLERS[name](checker, length=9, mask_id=MASK, prefix=PROMPTS, seed=1,
                            network_kwargs=checker.kwargs())
    assert result.tokens.shape == (4, 9) and (result.tokens != MASK).all()
    assert min(checker.batch_sizes) < 4  # some calls were on a subset of the rows
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(result.tokens[row, : len(prompt)], prompt)


def test_network_kwargs_reach_an_autoregressive_model_with_their_rows():
    prompts = torch.tensor([[1, 2], [3, 4], [5, 6]])
    seen = []

    def model(x, positions=None, *, row_id):
        assert torch.equal(x[:, 1:3], prompts[row_id])
        seen.append(len(row_id))
        return MarkovAR()(x)

    result = sample.autoregressive(model, length=8, bos_id=MASK, prefix=prompts, eos_id=EOS, seed=4,
                                   network_kwargs=dict(row_id=torch.arange(3)))
    assert result.tokens.shape == (3, 8) and len(seen) == result.nfe


@pytest.mark.parametrize("prefix, batch_size, rows", [
    (torch.tensor([4, 5]), 3, 3),
    (torch.tensor([[4, 5]]), 3, 3),  # [1, P] broadcast
    (torch.tensor([[4, 5]]), None, 1),
    (torch.tensor([[4, 5], [6, 7]]), None, 2),
    ([[4, 5, 6], [7]], None, 2),  # lists of ids
    (torch.nested.nested_tensor([torch.tensor([4, 5, 6]), torch.tensor([7])]), None, 2),
])
def test_prompts_as_users_have_them(prefix, batch_size, rows):
    for name in ("first_hitting", "ancestral", "confidence"):
        result = SAMPLERS[name](LANGUAGE, batch_size=batch_size, length=6, mask_id=MASK, prefix=prefix, seed=0)
        assert result.tokens.shape == (rows, 6) and (result.tokens != MASK).all()
        prompts = list(prefix.unbind()) if isinstance(prefix, Tensor) and prefix.is_nested else prefix
        for row in range(rows):
            prompt = torch.as_tensor(prompts[row % len(prompts)] if not isinstance(prompts, Tensor) or prompts.dim() == 2
                                     else prompts)
            assert torch.equal(result.tokens[row, : len(prompt)], prompt)


def tokens_after_first_eos_are_eos(tokens: Tensor, generated: Tensor) -> bool:
    columns = torch.arange(tokens.shape[1])
    first = torch.where((tokens == EOS) & generated, columns, tokens.shape[1]).amin(1, keepdim=True)
    after = generated & (columns > first)
    return bool((tokens[after] == EOS).all())


@pytest.mark.parametrize("name", SAMPLERS)
def test_eos_fills_the_rest_of_a_row_and_done_rows_stop(name):
    prompts = [torch.tensor([EOS, 5]), torch.tensor([3]), torch.tensor([], dtype=torch.long), torch.tensor([EOS])] * 6
    checker = RowChecker(prompts, length=12)
    result = SAMPLERS[name](checker, length=12, mask_id=MASK, prefix=prompts, seed=2, eos_id=EOS,
                            network_kwargs=checker.kwargs())
    generated = torch.ones(len(prompts), 12, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        generated[row, : len(prompt)] = False
        assert torch.equal(result.tokens[row, : len(prompt)], prompt)  # EOS in a prompt is kept, not followed
    assert (result.tokens != MASK).all()
    assert tokens_after_first_eos_are_eos(result.tokens, generated)
    assert bool(((result.tokens == EOS) & generated).any())  # EOS (1 in 12 likely) was drawn somewhere


def test_eos_in_the_autoregressive_sampler():
    result = sample.autoregressive(MarkovAR(), batch_size=64, length=10, bos_id=MASK, eos_id=EOS, seed=3)
    assert tokens_after_first_eos_are_eos(result.tokens, torch.ones_like(result.tokens, dtype=torch.bool))
    assert result.categorical_draws < 64 * 10  # rows that drew EOS made no more draws
    assert bool((result.tokens == EOS).any())


def test_eos_check_can_fail():
    """The EOS check above catches a row that goes on after its EOS."""
    result = sample.first_hitting(LANGUAGE, batch_size=64, length=12, mask_id=MASK, seed=2)
    assert not tokens_after_first_eos_are_eos(result.tokens, torch.ones_like(result.tokens, dtype=torch.bool))


@pytest.mark.parametrize("name", SAMPLERS)
def test_history_and_callback(name):
    seen = []
    result = SAMPLERS[name](LANGUAGE, length=7, mask_id=MASK, prefix=[torch.tensor([4, 4]), torch.tensor([5])],
                            seed=5, return_history=True, callback=lambda step, tokens: seen.append((step, tokens)))
    history, probs = result.history, result.token_probs
    assert history.shape[1:] == (2, 7) and torch.equal(history[-1], result.tokens)
    assert [step for step, _ in seen] == list(range(len(history)))
    assert all(torch.equal(tokens, history[step]) for step, tokens in seen)
    masked = history == MASK
    assert bool((masked[1:] <= masked[:-1]).all())  # a decided position stays decided
    decided = ~masked[:-1] & ~masked[1:]
    assert torch.equal(history[:-1][decided], history[1:][decided])
    assert probs[0, :2].isnan().all() and probs[1, :1].isnan().all()  # prompt tokens were not drawn
    generated = probs[0, 2:], probs[1, 1:]
    assert all(bool(((p > 0) & (p <= 1)).all()) for p in generated)


def test_history_probabilities_are_those_of_the_draw():
    """Exact first-hitting at temperature 0.8: each token's recorded probability is its
    probability under softmax(oracle logits / 0.8) in the state before its step."""
    result = sample.first_hitting(LANGUAGE, batch_size=3, length=6, mask_id=MASK, seed=6, temperature=0.8,
                                  return_history=True)
    before = torch.cat([torch.full((1, 3, 6), MASK), result.history[:-1]])
    for state, after in zip(before, result.history):
        row, position = ((state == MASK) & (after != MASK)).nonzero(as_tuple=True)
        logits = LANGUAGE(state)[row, position]
        expected = reference.sampling_probs(logits.double(), temperature=0.8, exclude=MASK)
        expected = expected.gather(1, after[row, position][:, None])[:, 0]
        torch.testing.assert_close(result.token_probs[row, position], expected, rtol=1e-5, atol=1e-7)


ANCHOR = 5
NEXT = LANGUAGE.transition[ANCHOR]  # the law of a token after ANCHOR (a few likely successors)


def next_tokens(draws: int, **options) -> Tensor:
    return sample.first_hitting(LANGUAGE, batch_size=draws, length=2, mask_id=MASK, prefix=torch.tensor([ANCHOR]),
                                seed=7, **options).tokens[:, 1]


def test_min_p_keeps_tokens_near_the_likeliest():
    min_p = 0.3
    kept = NEXT >= min_p * NEXT.max()
    expected = torch.where(kept, NEXT, 0.0)
    drawn = next_tokens(20_000, min_p=min_p)
    assert 1 < int(kept.sum()) < LANGUAGE.vocab_size
    assert chisquare_pvalue(drawn, expected / expected.sum()) > ALPHA
    assert bool((~kept[next_tokens(20_000)]).any())  # without min_p the others are drawn


def test_several_excluded_ids_with_a_temperature_follow_the_reference():
    excluded = [int(i) for i in NEXT.topk(3).indices]  # the likeliest three
    drawn = next_tokens(50_000, exclude_ids=excluded, temperature=0.7)
    logits = NEXT.log().clone()
    logits[excluded] = -math.inf
    assert chisquare_pvalue(drawn, reference.sampling_probs(logits, temperature=0.7)) > ALPHA
    assert chisquare_pvalue(drawn, reference.sampling_probs(logits, temperature=1.0)) < ALPHA  # the check has power


def test_fused_path_writes_no_log_probabilities(monkeypatch):
    """Temperature and excluded ids go to the kernel: the shaped log-softmax is never computed
    then; a filter needs it."""
    def refuse(self, logits, sites):
        raise AssertionError("log_probs computed")
    monkeypatch.setattr(TokenShaping, "log_probs", refuse)
    for options in (dict(temperature=0.5), dict(exclude_ids=[1, 2]), dict(temperature=0.0, top_k=2)):
        sample.first_hitting(LANGUAGE, batch_size=2, length=5, mask_id=MASK, seed=0, **options)
    with pytest.raises(AssertionError, match="log_probs computed"):
        sample.first_hitting(LANGUAGE, batch_size=2, length=5, mask_id=MASK, seed=0, top_k=2)


def test_min_new_tokens_suppresses_eos_early():
    prompts = [torch.tensor([1, 2]), torch.tensor([3])]
    result = sample.first_hitting(LANGUAGE, length=12, mask_id=MASK, prefix=prompts * 50, seed=8, eos_id=EOS,
                                  min_new_tokens=4)
    assert not bool((result.tokens[0::2, 2:6] == EOS).any()) and not bool((result.tokens[1::2, 1:5] == EOS).any())
    assert bool((result.tokens == EOS).any())


def test_a_user_processor_sees_its_sites():
    calls = []

    def ban_two(scores, sites):
        calls.append((sites.sequences.clone(), sites.positions.clone()))
        scores[..., 2] = -math.inf
        return scores

    result = sample.confidence(LANGUAGE, batch_size=3, length=6, mask_id=MASK, steps=3, seed=9, processors=[ban_two])
    assert not bool((result.tokens == 2).any()) and calls
    for sequences, positions in calls:
        assert bool(((sequences >= 0) & (sequences < 3)).all()) and bool(((positions >= 0) & (positions < 6)).all())


def test_options_object_and_keywords_combine():
    options = SamplingOptions(temperature=0.0)
    by_object = sample.first_hitting(LANGUAGE, batch_size=2, length=5, mask_id=MASK, options=options, seed=3)
    by_keywords = sample.first_hitting(LANGUAGE, batch_size=2, length=5, mask_id=MASK, temperature=0.0, seed=3)
    assert torch.equal(by_object.tokens, by_keywords.tokens)
    with pytest.raises(ValueError, match="temperature"):
        dataclasses.replace(options, temperature=-1.0)


def test_a_module_in_training_mode_is_named():
    network = Transformer(TransformerConfig.preset("tiny", vocab_size=MASK + 1, max_len=8))
    with pytest.warns(UserWarning, match="training mode"):
        sample.first_hitting(network, batch_size=1, length=4, mask_id=MASK, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample.first_hitting(network.eval(), batch_size=1, length=4, mask_id=MASK, seed=0)


def test_the_network_device_comes_from_the_module_or_the_adapter():
    network = Transformer(TransformerConfig.preset("tiny", vocab_size=MASK + 1, max_len=8))
    assert Denoiser(network).device == torch.device("cpu")
    assert Denoiser(lambda x: network(x)).device is None
    assert Denoiser(lambda x: network(x), device="cpu").device == torch.device("cpu")


def test_positions_declared_but_ignored_is_named():
    def everything(x, positions=None):
        return LANGUAGE(x)
    with pytest.raises(ValueError, match="returned every position"):
        sample.first_hitting(Denoiser(everything, accepts_positions=True), batch_size=1, length=4, mask_id=MASK)
    with pytest.raises(ValueError, match="takes no positions"):
        Denoiser(lambda x: LANGUAGE(x), accepts_positions=True)


BAD = {
    "network_kwargs_rows": (ValueError, r"network_kwargs\['mask'\] must have a leading batch dim of B = 2",
                            dict(network_kwargs=dict(mask=torch.ones(3, 8)))),
    "network_kwargs_type": (TypeError, "network_kwargs", dict(network_kwargs=[1])),
    "exclude_ids_str": (TypeError, "exclude_ids", dict(exclude_ids="0")),
    "exclude_ids_float": (TypeError, "exclude_ids", dict(exclude_ids=[1.5])),
    "exclude_ids_range": (ValueError, "exclude_ids", dict(exclude_ids=[99])),
    "eos_excluded": (ValueError, "eos_id", dict(eos_id=3, exclude_ids=[3])),
    "eos_mask": (ValueError, "eos_id", dict(eos_id=MASK)),
    "min_p": (ValueError, "min_p", dict(min_p=1.5)),
    "min_new_tokens": (ValueError, "min_new_tokens", dict(min_new_tokens=-1)),
    "callback": (TypeError, "callback", dict(callback=3)),
    "processors": (TypeError, "processors", dict(processors=[3])),
    "seed_count": (ValueError, "one seed per sequence", dict(seed=[1, 2, 3])),
    "seed_entry": (ValueError, "seed entries", dict(seed=[1, -2])),
    "seed_entry_float": (TypeError, "seed entries", dict(seed=[1, 2.5])),
    "seed_shape": (ValueError, "seed", dict(seed=torch.ones(2, 1, dtype=torch.long))),
    "unknown_option": (TypeError, "unexpected keyword argument 'temprature'", dict(temprature=0.5)),
    "options_type": (TypeError, "options", dict(options=dict(temperature=0.5))),
    "prefix_list_rows": (ValueError, "prefix holds 3 prompts", dict(prefix=[[1], [2], [3]])),
    "prefix_list_long": (ValueError, "prefix has 9 positions", dict(prefix=[[1] * 9, [2]])),
    "prefix_list_float": (TypeError, "prefix", dict(prefix=[torch.ones(2), torch.ones(1)])),
    "prefix_list_entry": (TypeError, r"prefix\[1\]", dict(prefix=[[1], "ab"])),
    "prefix_list_2d": (ValueError, r"prefix\[0\] must be 1-D", dict(prefix=[torch.ones(2, 2, dtype=torch.long)])),
    "prefix_empty_list": (ValueError, "prefix", dict(prefix=[])),
    "prefix_str": (TypeError, "prefix", dict(prefix="hello")),
    "batch_size_missing": (ValueError, "batch_size is required", dict(batch_size=None)),
    "order_name": (ValueError, "order", dict(order="third")),
    "schedule_ambiguous": (ValueError, "ambiguous", dict(schedule="linear")),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_named(name):
    error, pattern, overrides = BAD[name]
    options = {**dict(batch_size=2, length=8, mask_id=MASK, seed=0), **overrides}
    with pytest.raises(error, match=pattern):
        sample.first_hitting(LANGUAGE, **options)


def test_bad_strategy_arguments_are_named():
    with pytest.raises(ValueError, match="final_time"):
        sample.ancestral(LANGUAGE, batch_size=1, length=4, mask_id=MASK, steps=4, noise_removal=True, final_time=0)
    with pytest.raises(ValueError, match="prompts of one length"):
        sample.autoregressive(MarkovAR(), length=6, bos_id=MASK, prefix=[[1, 2], [3]])
    with pytest.raises(ValueError, match="must not contain bos_id"):
        sample.autoregressive(MarkovAR(), length=6, bos_id=MASK, prefix=[[1, MASK]])
