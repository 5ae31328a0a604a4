"""Per-sequence seeds: a sequence's tokens depend only on its seed, its prompt and the network's
output for it, never on the batch it is drawn in. Checked with the exact Markov oracle, whose
output for a row does not depend on the other rows."""
import numpy as np
import pytest
import torch

from mdm_ext import sample
from mdm_ext.sampling.seeds import row_seed, splitmix64
from sampler_cases import LANGUAGE, MASK, SAMPLERS, MarkovAR

SEEDS = [11, 12, 13, 14, 15, 2**62 + 1, 0, 12]  # a repeated seed draws the same sequence
PROMPTS = [torch.tensor(p, dtype=torch.long) for p in ([1, 2], [], [3], [4, 5, 6, 7], [], [8], [9, 9, 9], [])]


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_batch_of_8_equals_8_single_runs(name):
    run = SAMPLERS[name]
    batch = run(LANGUAGE, length=10, mask_id=MASK, prefix=PROMPTS, seed=SEEDS, eos_id=0)
    for row, (seed, prompt) in enumerate(zip(SEEDS, PROMPTS)):
        alone = run(LANGUAGE, length=10, mask_id=MASK, prefix=[prompt], seed=[seed], eos_id=0)
        assert torch.equal(alone.tokens[0], batch.tokens[row]), row
    order = [7, 3, 0, 5, 1, 6, 2, 4]
    shuffled = run(LANGUAGE, length=10, mask_id=MASK, prefix=[PROMPTS[i] for i in order],
                   seed=torch.tensor([SEEDS[i] for i in order]), eos_id=0)
    assert torch.equal(shuffled.tokens, batch.tokens[order])
    assert torch.equal(batch.tokens[1], batch.tokens[7])  # same seed, same (empty) prompt


def test_autoregressive_batch_equals_single_runs():
    prompts = torch.tensor([[1, 2], [3, 4], [5, 6], [1, 2]])
    seeds = [3, 4, 5, 6]
    batch = sample.autoregressive(MarkovAR(), length=9, bos_id=MASK, prefix=prompts, seed=seeds, eos_id=0)
    for row, seed in enumerate(seeds):
        alone = sample.autoregressive(MarkovAR(), length=9, bos_id=MASK, prefix=prompts[row:row + 1], seed=[seed],
                                      eos_id=0)
        assert torch.equal(alone.tokens[0], batch.tokens[row])


def test_the_invariance_check_can_fail():
    """With one shared seed a sequence depends on its batch: the check above would fail."""
    batch = sample.first_hitting(LANGUAGE, length=10, mask_id=MASK, prefix=PROMPTS, seed=11)
    alone = sample.first_hitting(LANGUAGE, length=10, mask_id=MASK, prefix=PROMPTS[:1], seed=11)
    shuffled = sample.first_hitting(LANGUAGE, length=10, mask_id=MASK, prefix=PROMPTS[::-1], seed=11)
    assert not torch.equal(batch.tokens[-1], shuffled.tokens[0]) or not torch.equal(alone.tokens[0], batch.tokens[0])


def _splitmix64_numpy(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def test_row_seed_is_splitmix64_on_unsigned_words():
    """The int64 implementation computes the uint64 definition bit for bit (numpy's unsigned
    arithmetic wraps by definition), and its seeds lie in [0, 2^63)."""
    generator = np.random.default_rng(0)
    seeds = generator.integers(0, 2**63, 1000, dtype=np.uint64)
    calls = generator.integers(0, 10**6, 1000, dtype=np.uint64)
    positions = generator.integers(0, 10**5, 1000, dtype=np.uint64)
    with np.errstate(over="ignore"):
        expected = _splitmix64_numpy(_splitmix64_numpy(_splitmix64_numpy(seeds) ^ calls) ^ positions) >> np.uint64(1)
        assert np.array_equal(splitmix64(torch.tensor(seeds.view(np.int64))).numpy().view(np.uint64),
                              _splitmix64_numpy(seeds))
    got = row_seed(*(torch.tensor(a.view(np.int64)) for a in (seeds, calls, positions)))
    assert bool((got >= 0).all()) and np.array_equal(got.numpy().view(np.uint64), expected)
    assert len(set(got.tolist())) == 1000
