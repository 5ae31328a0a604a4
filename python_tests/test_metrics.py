"""Metrics against values computed by hand."""
import math

import pytest
import torch

from mdm_ext.language import MarkovLanguage
from mdm_ext.metrics import (
    bigram_kl,
    evaluator_nll,
    gen_nll,
    summary,
    unigram_entropy,
    unigram_kl,
)

# pi = (5/6, 1/6): pi(0) * 0.1 = pi(1) * 0.5.
SKEWED = MarkovLanguage(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
UNIFORM = MarkovLanguage(torch.full((2, 2), 0.5))


def test_gen_nll():
    x = torch.tensor([[0, 1], [0, 0]])
    expected = torch.tensor(
        [-(math.log(5 / 6) + math.log(0.1)) / 2, -(math.log(5 / 6) + math.log(0.9)) / 2],
        dtype=torch.float64,
    )
    torch.testing.assert_close(gen_nll(x, SKEWED), expected)
    log_2 = torch.tensor([math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(gen_nll(torch.tensor([[1, 0, 1]]), UNIFORM), log_2)


def test_unigram_entropy():
    x = torch.tensor([[0, 0, 1, 1], [3, 3, 3, 3], [7, 1, 9, 4], [5, 2, 5, 5]])
    expected = torch.tensor(
        [math.log(2), 0.0, math.log(4), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))],
        dtype=torch.float64,
    )
    torch.testing.assert_close(unigram_entropy(x), expected)


def test_unigram_kl():
    assert unigram_kl(torch.tensor([[0, 1], [1, 0]]), UNIFORM) == pytest.approx(0.0, abs=1e-15)
    # Five zeros and a one match pi = (5/6, 1/6) exactly.
    assert unigram_kl(torch.tensor([[0, 0, 0], [0, 0, 1]]), SKEWED) == pytest.approx(0, abs=1e-15)
    # A token never seen adds nothing: KL(delta_0 || pi) = log(1 / pi(0)).
    assert unigram_kl(torch.tensor([[0, 0, 0, 0]]), UNIFORM) == pytest.approx(math.log(2))


def test_bigram_kl():
    # All four pairs once each under q(a, b) = 1/4.
    assert bigram_kl(torch.tensor([[0, 1, 1, 0, 0]]), UNIFORM) == pytest.approx(0.0, abs=1e-15)
    assert bigram_kl(torch.tensor([[0, 0, 0]]), UNIFORM) == pytest.approx(math.log(4))
    # Pairs (0, 1) and (1, 0) have q = 5/6 * 0.1 = 1/6 * 0.5 = 1/12, each seen half the time.
    assert bigram_kl(torch.tensor([[0, 1, 0]]), SKEWED) == pytest.approx(math.log(6))
    impossible = MarkovLanguage(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert bigram_kl(torch.tensor([[0, 0]]), impossible) == math.inf


def test_kl_of_exact_samples_is_small():
    language = MarkovLanguage.random(8, seed=0)
    samples = language.sample(500, 64, generator=torch.Generator().manual_seed(0))
    assert 0 <= unigram_kl(samples, language) < 2e-3
    assert 0 <= bigram_kl(samples, language) < 2e-2


class NextTokenModel:
    """Causal evaluator that predicts the current token again with probability 0.7."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        others = math.log(0.3 / (self.vocab_size - 1))
        logits = torch.full((*x.shape, self.vocab_size), others)
        logits.scatter_(2, x[..., None], math.log(0.7))
        return logits


def test_evaluator_nll():
    model = NextTokenModel(4)
    x = torch.tensor([[0, 0, 1], [2, 2, 2], [3, 1, 0]])
    expected = torch.tensor(
        [-(math.log(0.7) + math.log(0.1)) / 2, -math.log(0.7), -math.log(0.1)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(evaluator_nll(x, model, batch_size=2), expected, rtol=1e-6, atol=0)
    assert model.calls == 2
    uniform = evaluator_nll(x, lambda chunk: torch.zeros(*chunk.shape, 4))
    torch.testing.assert_close(uniform, torch.full((3,), math.log(4), dtype=torch.float64))


def test_summary():
    x = SKEWED.sample(20, 10, generator=torch.Generator().manual_seed(0))
    metrics = summary(x, SKEWED)
    assert set(metrics) == {"gen_nll", "true_nll", "unigram_entropy", "unigram_kl", "bigram_kl"}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["gen_nll"] == pytest.approx(float(gen_nll(x, SKEWED).mean()))
    assert metrics["true_nll"] == pytest.approx(SKEWED.sequence_entropy(10) / 10)
    assert metrics["bigram_kl"] == bigram_kl(x, SKEWED)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="x"):
        unigram_entropy(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="x"):
        gen_nll([[0, 1]], SKEWED)
    with pytest.raises(ValueError, match="x"):
        unigram_kl(torch.tensor([0, 1]), SKEWED)
    with pytest.raises(ValueError, match="x"):
        bigram_kl(torch.tensor([[0, 2]]), SKEWED)  # 2 is the mask id, not a token
    with pytest.raises(ValueError, match="x"):
        bigram_kl(torch.tensor([[0], [1]]), SKEWED)
    with pytest.raises(ValueError, match="x"):
        evaluator_nll(torch.tensor([[0], [1]]), NextTokenModel(2))
    with pytest.raises(ValueError, match="model"):
        evaluator_nll(torch.tensor([[0, 1]]), lambda chunk: torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x"):
        evaluator_nll(torch.tensor([[0, 5]]), lambda chunk: torch.zeros(*chunk.shape, 4))
