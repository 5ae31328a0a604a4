"""Generative perplexity under a Hugging Face causal LM, against a hand computation: a tiny random
GPT-2 and a word-level tokenizer built in the test (nothing downloaded)."""
import math

import pytest
import torch

from offline_models import tiny_gpt2, word_tokenizer
from mdm_ext.metrics import gen_perplexity, load_evaluator

TOKENIZER = word_tokenizer()
CONTEXT = 4
MODEL = tiny_gpt2(len(TOKENIZER), n_positions=CONTEXT)
LONG = " ".join(f"w{i % 10}" for i in range(11))  # 11 tokens: chunks of 4, 4 and 3
TEXTS = ["w1 w2 w3", "w5 w6 <eos> w7", "<eos> w1 <eos> w3", LONG, ""]
# Scored token positions of each text, written out: never the first token of a chunk of 4
# (positions 0, 4, 8), and for "first" nothing after the first EOS past position 0; for
# "mdlm" every non-EOS token and each chunk's first EOS only.
SCORED = {
    "first": [[1, 2], [1, 2], [1, 2], [1, 2, 3, 5, 6, 7, 9, 10], []],
    "mdlm": [[1, 2], [1, 2, 3], [1, 3], [1, 2, 3, 5, 6, 7, 9, 10], []],
}


def token_nll(ids: list[int], position: int) -> float:
    """-log p(ids[position] | the tokens before it in its chunk of CONTEXT), by one model call
    on that chunk alone."""
    start = position // CONTEXT * CONTEXT
    with torch.no_grad():
        logits = MODEL(torch.tensor([ids[start:start + CONTEXT]])).logits[0].double()
    return float(-logits.log_softmax(-1)[position - start - 1, ids[position]])


@pytest.mark.parametrize("rule", ["first", "mdlm"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_matches_the_hand_computation(rule, batch_size):
    result = gen_perplexity(TEXTS, MODEL, TOKENIZER, batch_size=batch_size, eos_rule=rule)
    nlls = [[token_nll(TOKENIZER(text)["input_ids"], p) for p in positions]
            for text, positions in zip(TEXTS, SCORED[rule])]
    assert result.scored_tokens.tolist() == [len(positions) for positions in SCORED[rule]]
    expected_samples = [sum(values) / len(values) if values else math.nan for values in nlls]
    torch.testing.assert_close(result.sample_nll, torch.tensor(expected_samples, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6, equal_nan=True)
    pooled = sum(map(sum, nlls)) / sum(map(len, nlls))
    assert result.nll == pytest.approx(pooled, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(pooled), rel=1e-5)
    # entropy of each text's own tokens: w1 w2 w3 -> log 3; LONG: w0 twice, 9 words once
    assert result.unigram_entropy[0].item() == pytest.approx(math.log(3))
    long_entropy = -((2 / 11) * math.log(2 / 11) + 9 * (1 / 11) * math.log(1 / 11))
    assert result.unigram_entropy[3].item() == pytest.approx(long_entropy)
    assert math.isnan(result.unigram_entropy[4].item())


def test_bos_and_truncation_are_asked_for():
    # add_bos: "<bos> w1 w2 w3", so w1 is scored too; max_length keeps the text's first tokens
    result = gen_perplexity(["w1 w2 w3"], MODEL, TOKENIZER, batch_size=1, add_bos=True)
    ids = [TOKENIZER.bos_token_id] + TOKENIZER("w1 w2 w3")["input_ids"]
    expected = sum(token_nll(ids, p) for p in (1, 2, 3)) / 3
    assert result.scored_tokens.tolist() == [3] and result.nll == pytest.approx(expected, rel=1e-5)
    truncated = gen_perplexity([LONG], MODEL, TOKENIZER, batch_size=2, max_length=6)
    assert truncated.scored_tokens.tolist() == [4]  # positions 1, 2, 3, 5
    assert truncated.unigram_entropy.item() == pytest.approx(math.log(6))


def test_loads_a_saved_evaluator(tmp_path):
    MODEL.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    model, tokenizer = load_evaluator(str(tmp_path))
    assert not model.training
    loaded = gen_perplexity(TEXTS, model, tokenizer, batch_size=2)
    assert loaded.nll == pytest.approx(gen_perplexity(TEXTS, MODEL, TOKENIZER, batch_size=2).nll)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="texts"):
        gen_perplexity("w1 w2", MODEL, TOKENIZER, batch_size=1)
    with pytest.raises(ValueError, match="texts"):
        gen_perplexity([], MODEL, TOKENIZER, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        gen_perplexity(TEXTS, MODEL, TOKENIZER, batch_size=0)
    with pytest.raises(ValueError, match="eos_rule"):
        gen_perplexity(TEXTS, MODEL, TOKENIZER, batch_size=1, eos_rule="last")
    with pytest.raises(ValueError, match="context"):
        gen_perplexity(TEXTS, lambda **inputs: None, TOKENIZER, batch_size=1)
    with pytest.raises(ValueError, match="no token"):
        gen_perplexity(["w1", ""], MODEL, TOKENIZER, batch_size=1)
