"""MarkovLanguage against brute-force enumeration and independent matrix-power references."""
import itertools
import math

import numpy as np
import pytest
import torch

import mdm_ext.language as language_module
from mdm_ext.language import MarkovLanguage

# Non-reversible chains, so that the backward factor is not the forward one in disguise; one with
# zero transitions and a periodic one, which never mixes.
CHAINS = {
    "dense": [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.1, 0.5]],
    "sparse": [[0.0, 0.7, 0.3], [0.2, 0.0, 0.8], [0.5, 0.5, 0.0]],
    "cycle": [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
}


def reference_stationary(transition: np.ndarray) -> np.ndarray:
    """pi from the eigenvector of P^T for eigenvalue 1."""
    values, vectors = np.linalg.eig(transition.T)
    vector = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    return vector / vector.sum()


def enumerate_joint(transition: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All K^L sequences: [K^L, L] and their probabilities: [K^L] float64."""
    vocab_size = transition.shape[0]
    stationary = reference_stationary(transition)
    sequences = np.array(list(itertools.product(range(vocab_size), repeat=length)))
    probs = stationary[sequences[:, 0]] * np.prod(
        transition[sequences[:, :-1], sequences[:, 1:]], axis=1
    )
    return torch.from_numpy(sequences), torch.from_numpy(probs)


def brute_force_conditional(
    sequences: torch.Tensor, probs: torch.Tensor, x: torch.Tensor, mask_id: int, position: int
) -> torch.Tensor:
    """p(x_position = v | unmasked tokens of x: [L]) for every v, by summing the joint."""
    unmasked = x != mask_id
    consistent = (sequences[:, unmasked] == x[unmasked]).all(1)
    vocab_size = mask_id
    marginal = torch.zeros(vocab_size, dtype=torch.float64)
    marginal.index_add_(0, sequences[consistent, position], probs[consistent])
    return marginal / marginal.sum()


def masked_copies(x: torch.Tensor, mask_id: int, patterns: list[str]) -> torch.Tensor:
    """Rows of x: [L] masked where a pattern has 'm' ('.' keeps the token): [len(patterns), L]."""
    masks = torch.tensor([[c == "m" for c in pattern] for pattern in patterns])
    return torch.where(masks, mask_id, x.expand(len(patterns), -1))


PATTERNS_5 = [
    "mmmmm",  # all masked
    "mmmm.",  # one unmasked, at the end
    ".mmmm",  # one unmasked, at the start
    "m...m",  # masks at the ends
    ".m.m.",
    "..m..",
    "mm.mm",
    ".....",  # nothing masked: one-hot rows
]


@pytest.fixture(params=["kept", "propagated"])
def power_mode(request, monkeypatch):
    """Runs a test with the powers kept for all anchors and with per-call propagation."""
    if request.param == "propagated":
        monkeypatch.setattr(language_module, "KEEP_ALL_ROWS_MAX_VOCAB", 0)
    return request.param


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_oracle_matches_brute_force(chain, power_mode):
    transition = np.array(CHAINS[chain])
    language = MarkovLanguage(torch.tensor(transition))
    length = len(PATTERNS_5[0])
    sequences, probs = enumerate_joint(transition, length)
    generator = torch.Generator().manual_seed(1)
    # Masking a possible sequence keeps the evidence at positive probability.
    for truth in language.sample(3, length, generator=generator):
        x = masked_copies(truth, language.mask_id, PATTERNS_5)
        log_probs = language(x, dtype=torch.float64)
        assert log_probs.shape == (len(PATTERNS_5), length, language.logits_width)
        assert torch.all(log_probs[..., language.mask_id] == -math.inf)
        for row, position in itertools.product(range(x.shape[0]), range(length)):
            probs_here = log_probs[row, position, : language.vocab_size].exp()
            if x[row, position] == language.mask_id:
                expected = brute_force_conditional(
                    sequences, probs, x[row], language.mask_id, position
                )
            else:
                expected = torch.nn.functional.one_hot(x[row, position], 3).double()
            torch.testing.assert_close(probs_here, expected, rtol=1e-9, atol=1e-12)


def test_oracle_with_zero_probability_transitions_gives_minus_inf():
    language = MarkovLanguage(torch.tensor(CHAINS["cycle"]))
    x = torch.tensor([[0, language.mask_id, language.mask_id]])
    log_probs = language(x)
    # The cycle 0 -> 1 -> 2 is deterministic.
    assert torch.equal(log_probs[0, 1, :3], torch.tensor([-math.inf, 0.0, -math.inf]))
    assert torch.equal(log_probs[0, 2, :3], torch.tensor([-math.inf, -math.inf, 0.0]))


def matrix_power_conditional(
    language: MarkovLanguage, x: torch.Tensor, position: int
) -> torch.Tensor:
    """The conditional of a masked position of x: [L] from explicit matrix powers of P."""
    unmasked = (x != language.mask_id).nonzero().flatten().tolist()
    left = [i for i in unmasked if i < position]
    right = [i for i in unmasked if i > position]
    weights = language.stationary.clone()
    if left:
        power = torch.linalg.matrix_power(language.transition, position - left[-1])
        weights = power[x[left[-1]]]
    if right:
        power = torch.linalg.matrix_power(language.transition, right[0] - position)
        weights = weights * power[:, x[right[0]]]
    return weights / weights.sum()


def test_oracle_matches_matrix_powers_beyond_mixing(power_mode):
    language = MarkovLanguage.random(16, seed=3)
    length = 120
    generator = torch.Generator().manual_seed(2)
    truth = language.sample(4, length, generator=generator)
    # Long masked gaps (up to the whole sequence) reach distances past the mixing distance.
    keep = torch.rand(4, length, generator=generator) < 0.05
    keep[0] = False
    keep[1, :] = False
    keep[1, 7] = True
    x = torch.where(keep, truth, language.mask_id)
    log_probs = language(x, dtype=torch.float64)
    for row in range(4):
        for position in range(0, length, 7):
            if x[row, position] == language.mask_id:
                expected = matrix_power_conditional(language, x[row], position)
                probs = log_probs[row, position, :16].exp()
                torch.testing.assert_close(probs, expected, rtol=1e-9, atol=1e-12)


def test_positions_subset_equals_full_call(power_mode):
    language = MarkovLanguage.random(5, seed=1)
    generator = torch.Generator().manual_seed(3)
    truth = language.sample(6, 12, generator=generator)
    masked = torch.rand(6, 12, generator=generator) < 0.6
    x = torch.where(masked, language.mask_id, truth)
    positions = torch.randint(0, 12, (6, 4), generator=generator)  # repeats allowed
    full = language(x)
    subset = language(x, positions)
    index = positions[:, :, None].expand(-1, -1, language.logits_width)
    assert torch.equal(subset, full.gather(1, index))


def test_oracle_sizes_and_dtype():
    language = MarkovLanguage.random(64, seed=0)
    x = torch.full((2, 9), language.mask_id)
    assert language(x).dtype == torch.float32
    assert language(x, torch.zeros(2, 1, dtype=torch.long)).shape == (2, 1, 65)
    assert language(x[:0]).shape == (0, 9, 65)
    assert MarkovLanguage.accepts_positions


def test_log_likelihood_matches_enumeration():
    transition = np.array(CHAINS["dense"])
    language = MarkovLanguage(torch.tensor(transition))
    sequences, probs = enumerate_joint(transition, 4)
    log_likelihood = language.log_likelihood(sequences)
    assert log_likelihood.dtype == torch.float64
    torch.testing.assert_close(log_likelihood, probs.log())
    torch.testing.assert_close(log_likelihood.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_stationary_distribution(chain):
    transition = np.array(CHAINS[chain])
    language = MarkovLanguage(torch.tensor(transition))
    expected = torch.from_numpy(reference_stationary(transition))
    torch.testing.assert_close(language.stationary, expected, rtol=1e-12, atol=1e-14)


def test_entropy_matches_monte_carlo():
    language = MarkovLanguage.random(16, seed=5)
    length = 64
    samples = language.sample(2000, length, generator=torch.Generator().manual_seed(4))
    nll_per_token = -language.log_likelihood(samples) / length
    standard_error = nll_per_token.std() / math.sqrt(len(nll_per_token))
    expected = language.sequence_entropy(length) / length
    assert abs(float(nll_per_token.mean()) - expected) < 4 * float(standard_error)
    # The entropy rate from its definition, summed term by term.
    pi, p = language.stationary, language.transition
    rate = -sum(float(pi[a] * p[a, b] * p[a, b].log()) for a in range(16) for b in range(16))
    assert language.entropy_rate == pytest.approx(rate, rel=1e-12)


def test_sample_frequencies_match_pair_probabilities():
    transition = np.array(CHAINS["sparse"])
    language = MarkovLanguage(torch.tensor(transition))
    samples = language.sample(4000, 40, generator=torch.Generator().manual_seed(6))
    pairs = samples[:, :-1] * 3 + samples[:, 1:]
    counts = torch.bincount(pairs.flatten(), minlength=9).double()
    pair_probs = (language.stationary[:, None] * language.transition).flatten()
    total = counts.sum()
    # Pairs overlap along a sequence; 6 binomial standard errors cover the correlation.
    tolerance = 6 * torch.sqrt(total * pair_probs * (1 - pair_probs)) + 1e-9
    assert torch.all((counts - total * pair_probs).abs() <= tolerance)
    assert torch.all(counts[pair_probs == 0] == 0)
    first_counts = torch.bincount(samples[:, 0], minlength=3).double()
    first_tolerance = 5 * torch.sqrt(4000 * language.stationary * (1 - language.stationary))
    assert torch.all((first_counts - 4000 * language.stationary).abs() <= first_tolerance)


def test_sample_is_reproducible():
    language = MarkovLanguage.random(50, seed=0)
    first = language.sample(3, 20, generator=torch.Generator().manual_seed(7))
    second = language.sample(3, 20, generator=torch.Generator().manual_seed(7))
    assert first.dtype == torch.long and first.shape == (3, 20)
    assert torch.equal(first, second)
    assert 0 <= int(first.min()) and int(first.max()) < 50


def test_random_language():
    language = MarkovLanguage.random(300, seed=2)
    assert language.transition.dtype == torch.float64
    assert language.mask_id == 300 and language.logits_width == 301
    torch.testing.assert_close(language.transition.sum(1), torch.ones(300, dtype=torch.float64))
    assert bool((language.transition > 0).all())
    torch.testing.assert_close(language.stationary @ language.transition, language.stationary)
    # Each row is a permutation of the same weights.
    sorted_rows = language.transition.sort(1).values
    torch.testing.assert_close(sorted_rows, sorted_rows[:1].expand(300, -1))
    # Low entropy, but far from deterministic.
    assert 0.5 < language.entropy_rate < 0.9 * math.log(300)
    assert torch.equal(MarkovLanguage.random(300, seed=2).transition, language.transition)
    assert not torch.equal(MarkovLanguage.random(300, seed=3).transition, language.transition)


def test_sparse_language():
    language = MarkovLanguage.sparse(50, successors=3, tail_mass=0.2, seed=1)
    torch.testing.assert_close(language.transition.sum(1), torch.ones(50, dtype=torch.float64))
    # Each row: 3 successors at 0.8 / 3 + 0.2 / 50, the rest at 0.2 / 50.
    expected = torch.tensor([0.2 / 50] * 47 + [0.8 / 3 + 0.2 / 50] * 3, dtype=torch.float64)
    torch.testing.assert_close(language.transition.sort(1).values, expected.expand(50, -1))
    assert torch.equal(MarkovLanguage.sparse(50, successors=3, tail_mass=0.2, seed=1).transition,
                       language.transition)
    # With 5 common tokens, the likely successors are among them.
    hubs = MarkovLanguage.sparse(50, successors=3, tail_mass=0.2, common=5, seed=1)
    assert bool((hubs.transition[:, 5:] < 0.01).all())
    assert bool(((hubs.transition[:, :5] > 0.01).sum(1) == 3).all())
    bad_arguments = [({"successors": 0}, "successors"), ({"successors": 51}, "successors"),
                     ({"tail_mass": 0.0}, "tail_mass"), ({"tail_mass": 1.5}, "tail_mass"),
                     ({"common": 0}, "common"), ({"common": 51}, "common"),
                     ({"successors": 6, "common": 5}, "successors")]
    for arguments, name in bad_arguments:
        with pytest.raises(ValueError, match=name):
            MarkovLanguage.sparse(50, **arguments)


def test_bad_inputs_name_the_argument():
    language = MarkovLanguage.random(4, seed=0)
    with pytest.raises(TypeError, match="x"):
        language(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x"):
        language(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x"):
        language(torch.full((1, 3), 5))  # above the mask id
    with pytest.raises(ValueError, match="x"):
        language.log_likelihood(torch.full((1, 3), language.mask_id))
    x = torch.full((2, 3), language.mask_id)
    with pytest.raises(ValueError, match="positions"):
        language(x, torch.tensor([[3], [0]]))
    with pytest.raises(ValueError, match="positions"):
        language(x, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="positions"):
        language(x, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="transition"):
        MarkovLanguage(torch.tensor([[0.5, 0.6], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="transition"):
        MarkovLanguage(torch.ones(2, 3) / 3)
    with pytest.raises(TypeError, match="transition"):
        MarkovLanguage(torch.eye(2, dtype=torch.long))
    with pytest.raises(ValueError, match="length"):
        language.sample(2, 0)
