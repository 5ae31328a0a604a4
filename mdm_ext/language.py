"""A synthetic language with exact likelihoods and exact masked conditionals.

``MarkovLanguage`` is a stationary first-order Markov chain over K real tokens (ids 0..K-1; the
mask token is K). It is the ground truth against which MDM samplers are measured: exact samples
are training data, ``log_likelihood`` scores generated text, and calling the language is an oracle
denoiser that returns the exact distribution of every masked token given all unmasked tokens of
its sequence. A sampler driven by this oracle therefore samples from the language itself, and any
departure in its output measures the sampler alone.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .checks import check_tokens

# Rows of P^d that match the stationary distribution to this relative precision are treated as
# equal to it: the remaining error is far below what float64 conditionals are compared at.
MIXED_RTOL = 1e-12
# Up to this vocabulary the rows of every token's P^d are kept between calls (K^2 float64 per
# distance, 8 MiB at K = 1024); above it each call propagates only the rows it needs.
KEEP_ALL_ROWS_MAX_VOCAB = 1024
STATIONARY_TOL = 1e-15
STATIONARY_MAX_ITERS = 100_000


def _stationary_distribution(transition: Tensor) -> Tensor:
    """pi with pi P = pi, by power iteration on the lazy chain (P + I) / 2.

    transition: [K, K] float64 row-stochastic, irreducible. The lazy chain has the same pi and is
    aperiodic, so the iteration converges for periodic chains too; each step costs only K^2, which
    keeps K = 8192 cheap where a direct solve would cost K^3.
    """
    vocab_size = transition.shape[0]
    stationary = torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64)
    for _ in range(STATIONARY_MAX_ITERS):
        updated = 0.5 * (stationary @ transition + stationary)
        change = float((updated - stationary).abs().sum())
        stationary = updated
        if change <= STATIONARY_TOL:
            return stationary / stationary.sum()
    raise ValueError("transition: power iteration did not converge; is the chain irreducible?")


def _nearest_unmasked(unmasked: Tensor) -> tuple[Tensor, Tensor]:
    """unmasked: [B, L] bool -> (left, right): [B, L] int64, the nearest unmasked position at or
    before each position (-1 if none) and at or after it (L if none)."""
    length = unmasked.shape[1]
    position_index = torch.arange(length, device=unmasked.device).expand_as(unmasked)
    left = torch.where(unmasked, position_index, -1).cummax(1).values
    # The same scan on the reversed sequence, whose position j is L - 1 - i.
    reversed_left = torch.where(unmasked, length - 1 - position_index, -1).flip(1).cummax(1).values
    return left, length - 1 - reversed_left.flip(1)


def _is_mixed(rows: Tensor, stationary: Tensor) -> bool:
    """Whether every row of rows: [U, K] equals stationary: [K] to relative precision MIXED_RTOL."""
    return bool(((rows - stationary).abs() <= MIXED_RTOL * stationary).all())


class _PowerRows:
    """Rows P^d[a, :] of a row-stochastic matrix P for a batch of (anchor a, distance d) pairs.

    Distance 0 stands for "no anchor" and gives the stationary distribution pi. Rows are propagated
    one step (one product with P) at a time. P^d tends to the matrix whose rows all equal pi, so
    once every propagated row matches pi to MIXED_RTOL the last power serves all longer distances:
    the work stops at the chain's mixing distance (about 25 steps for ``MarkovLanguage.random``),
    however long the sequences. A chain that never mixes (a periodic one) is propagated to the
    largest distance asked for.

    For K <= KEEP_ALL_ROWS_MAX_VOCAB the rows of all K anchors are kept between calls, so that
    repeated calls only gather. Above it each call propagates the distinct anchors it needs: a step
    costs [distinct anchors, K] @ [K, K] and nothing of size K^2 is stored per distance.
    """

    def __init__(self, transition: Tensor, stationary: Tensor) -> None:
        self.transition = transition
        self.stationary = stationary
        vocab_size = transition.shape[0]
        keep_all = vocab_size <= KEEP_ALL_ROWS_MAX_VOCAB
        # _kept: [D+1, K, K] with _kept[d] = P^d (and _kept[0] all pi), or None when not keeping.
        self._kept = self._start(torch.arange(vocab_size)) if keep_all else None
        self._kept_mixed = False

    def __call__(self, anchors: Tensor, distances: Tensor) -> Tensor:
        """anchors, distances: [N] int64 -> [N, K] float64, whose row n is P^d[a] for
        d = distances[n], a = anchors[n]."""
        max_distance = int(distances.max()) if distances.numel() > 0 else 0
        if self._kept is None:
            unique_anchors, slot = torch.unique(anchors, return_inverse=True)
            table, _ = self._extend(self._start(unique_anchors), max_distance)
        else:
            if max_distance >= self._kept.shape[0] and not self._kept_mixed:
                # Extending to at least twice the current depth keeps the total copying linear.
                target = max(max_distance, 2 * (self._kept.shape[0] - 1))
                self._kept, self._kept_mixed = self._extend(self._kept, target)
            table, slot = self._kept, anchors
        return table[distances.clamp(max=table.shape[0] - 1), slot]

    def _start(self, anchors: Tensor) -> Tensor:
        """[2, U, K]: distance 0 (pi) and distance 1 (rows of P) for anchors: [U]."""
        no_anchor = self.stationary.expand(anchors.shape[0], -1)
        return torch.stack([no_anchor, self.transition[anchors]])

    def _extend(self, table: Tensor, max_distance: int) -> tuple[Tensor, bool]:
        """table: [D+1, U, K] of powers -> the same extended to max_distance or until mixed,
        and whether its last power is mixed."""
        rows = table[-1]
        new_powers = []
        mixed = _is_mixed(rows, self.stationary)
        while not mixed and table.shape[0] - 1 + len(new_powers) < max_distance:
            rows = rows @ self.transition
            new_powers.append(rows)
            mixed = _is_mixed(rows, self.stationary)
        if new_powers:
            table = torch.cat([table, torch.stack(new_powers)])
        return table, mixed


class MarkovLanguage:
    """A stationary first-order Markov chain over K tokens, with K as the mask token.

    transition: [K, K] row-stochastic and irreducible; P[a, b] = p(x_{i+1} = b | x_i = a). It is
    stored in float64 (rows renormalised), together with its stationary distribution
    ``stationary``: [K], which is also the distribution of the first token, so every position has
    the same marginal. Treat both as read-only.

    Calling the language is the exact denoiser (see ``__call__``); it accepts ``positions`` so that
    a first-hitting sampler asks only for the tokens it unmasks.
    """

    accepts_positions = True

    def __init__(self, transition: Tensor) -> None:
        if not isinstance(transition, Tensor) or not transition.dtype.is_floating_point:
            raise TypeError("transition must be a floating-point torch.Tensor")
        if transition.dim() != 2 or transition.shape[0] != transition.shape[1]:
            raise ValueError(f"transition must have shape [K, K], got {tuple(transition.shape)}")
        if transition.shape[0] < 2:
            raise ValueError("transition must cover at least 2 tokens")
        # Rows are renormalised in float64, so they need to sum to 1 only to the input's precision.
        tolerance = torch.finfo(transition.dtype).eps ** 0.5
        transition = transition.to(torch.float64)
        row_sums = transition.sum(1)
        if bool((transition < 0).any()) or bool(((row_sums - 1).abs() > tolerance).any()):
            raise ValueError("transition must be non-negative with rows summing to 1")
        self.transition = transition / row_sums[:, None]
        self.stationary = _stationary_distribution(self.transition)
        # p(x_i = v | x_{i+d} = b) = P^d[v, b] pi(v) / pi(b) is row b of the reversed chain's P^d.
        reversed_transition = (
            self.transition.T * self.stationary[None, :] / self.stationary[:, None]
        )
        self._forward_rows = _PowerRows(self.transition, self.stationary)
        self._backward_rows = _PowerRows(reversed_transition, self.stationary)

    @classmethod
    def random(
        cls,
        vocab_size: int,
        *,
        seed: int = 0,
        zipf_exponent: float = 1.1,
        uniform_mass: float = 0.01,
    ) -> MarkovLanguage:
        """A chain whose rows are independent random permutations of Zipf weights r^-zipf_exponent
        (rank r = 1..K), mixed with ``uniform_mass`` of the uniform distribution.

        Each row concentrates on a few successors (low entropy rate, like text) while the uniform
        part keeps every transition possible, so the chain is irreducible and mixes quickly. A
        larger ``zipf_exponent`` lowers the entropy rate. Deterministic in ``seed``.
        """
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if not 0 < uniform_mass <= 1:
            raise ValueError(f"uniform_mass must be in (0, 1], got {uniform_mass}")
        generator = torch.Generator().manual_seed(seed)
        ranks = torch.arange(1, vocab_size + 1, dtype=torch.float64)
        zipf = ranks.pow(-zipf_exponent)
        row_weights = (1 - uniform_mass) * zipf / zipf.sum() + uniform_mass / vocab_size
        transition = torch.empty(vocab_size, vocab_size, dtype=torch.float64)
        # A row at a time: an argsort of a [K, K] random matrix costs far more memory at K = 8192.
        for row in transition:
            row.copy_(row_weights[torch.randperm(vocab_size, generator=generator)])
        return cls(transition)

    @classmethod
    def sparse(
        cls,
        vocab_size: int,
        *,
        successors: int = 4,
        tail_mass: float = 0.05,
        common: int | None = None,
        seed: int = 0,
    ) -> MarkovLanguage:
        """A chain in which each token is followed with probability 1 - tail_mass by one of
        ``successors`` tokens of its own (random, equally likely), drawn among the ``common`` tokens
        0..common-1 (all K when None), and otherwise by any token uniformly: a few likely
        continuations and a long tail of rare ones, each of probability tail_mass / K.

        The tail is what float32 Gumbel-max sampling loses (arXiv 2409.02908): its tokens fall
        below the truncated noise when an ancestral step scales them by (alpha_s - alpha_t) /
        (1 - alpha_t). With few ``common`` tokens, as in text, the rare tokens are those outside
        them, a sequence of common ones repeats tokens, and (successors close to common) any two
        common tokens are two likely steps apart, so that the tail is never forced by the tokens
        around it. Deterministic in ``seed``.
        """
        common = vocab_size if common is None else common
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if not 1 <= common <= vocab_size:
            raise ValueError(f"common must be in [1, vocab_size = {vocab_size}], got {common}")
        if not 1 <= successors <= common:
            raise ValueError(f"successors must be in [1, common = {common}], got {successors}")
        if not 0 < tail_mass <= 1:
            raise ValueError(f"tail_mass must be in (0, 1], got {tail_mass}")
        generator = torch.Generator().manual_seed(seed)
        transition = torch.full((vocab_size, vocab_size), tail_mass / vocab_size, dtype=torch.float64)
        for row in transition:
            row[torch.randperm(common, generator=generator)[:successors]] += (1 - tail_mass) / successors
        return cls(transition)

    @property
    def vocab_size(self) -> int:
        """K, the number of real tokens."""
        return self.transition.shape[0]

    @property
    def mask_id(self) -> int:
        """The mask token's id, K."""
        return self.vocab_size

    @property
    def logits_width(self) -> int:
        """K + 1: real tokens and the mask token, the width of the denoiser's output."""
        return self.vocab_size + 1

    @property
    def num_ids(self) -> int:
        """K + 1: the token ids the oracle takes, the mask included."""
        return self.logits_width

    @property
    def entropy_rate(self) -> float:
        """H(X_i | X_{i-1}) under stationarity, in nats per token."""
        row_entropy = -torch.special.xlogy(self.transition, self.transition).sum(1)
        return float(self.stationary @ row_entropy)

    def sequence_entropy(self, length: int) -> float:
        """H(X_1..X_L) = H(pi) + (L - 1) * entropy_rate in nats: the mean of -log p(x) over
        sequences of this length, so exact samples have a mean gen NLL of this divided by L."""
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        first_entropy = float(-torch.special.xlogy(self.stationary, self.stationary).sum())
        return first_entropy + (length - 1) * self.entropy_rate

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats. x: [B, L] ids in [0, K) -> [B] float64."""
        x = check_tokens(x, "x", num_ids=self.vocab_size)
        log_first = self.stationary[x[:, 0]].log()
        log_steps = self.transition[x[:, :-1], x[:, 1:]].log().sum(1)
        return log_first + log_steps

    @functools.cached_property
    def _offset_cdf(self) -> Tensor:
        """[(K + 1) * K]: the cumulative distribution of row a of [P; pi], plus a, flattened.

        Row a's values lie in (a, a + 1], so one 1-D search for a + u (u uniform in [0, 1)) draws
        from row a for every sequence at once, without gathering a [B, K] block per position. Row K
        (the mask id, standing for "no previous token") is pi, which draws the first token. The
        offset costs log2(K + 1) bits of u: probabilities are resolved to 2^-39 at K = 8192.
        """
        rows = torch.cat([self.transition, self.stationary[None, :]])
        cdf = rows.cumsum(1)
        cdf = cdf / cdf[:, -1:]
        offsets = torch.arange(self.vocab_size + 1, dtype=torch.float64)[:, None]
        return (cdf + offsets).flatten()

    def sample(
        self, num: int, length: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact samples: [num, length] int64, by inverse-CDF draws one position at a time."""
        if num < 0 or length < 1:
            raise ValueError(f"need num >= 0 and length >= 1, got num={num}, length={length}")
        x = torch.empty(num, length, dtype=torch.long)
        previous = torch.full((num,), self.mask_id, dtype=torch.long)
        for i in range(length):
            uniform = torch.rand(num, dtype=torch.float64, generator=generator)
            anchor = previous.to(torch.float64)
            # Keep a + u below a + 1 when the addition rounds up, so the draw stays in row a.
            target = torch.minimum(anchor + uniform, torch.nextafter(anchor + 1, anchor))
            flat_index = torch.searchsorted(self._offset_cdf, target, right=True)
            previous = flat_index - previous * self.vocab_size
            x[:, i] = previous
        return x

    def __call__(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Exact denoiser: log-probabilities of each queried token given all unmasked tokens.

        x: [B, L] ids in [0, K], K (``mask_id``) marking masked tokens.
        positions: optional [B, P] positions in [0, L) to evaluate; all L positions when None.
        Returns log_probs: [B, P or L, K + 1] in ``dtype``, where the mask column is always -inf,
        a masked position holds the log of its exact conditional distribution, and an unmasked
        position holds a one-hot (0 at its own token, -inf elsewhere): it is known with certainty.

        For a Markov chain only the nearest unmasked neighbours matter: with a at distance d_l to
        the left and b at distance d_r to the right,
            p(x_i = v | ...) is proportional to P^d_l[a, v] * P^d_r[v, b],
        that is to P^d_l[a, v] * R^d_r[b, v] / pi(v) with R the reversed chain
        (p(x_i = v | x_{i+d} = b) = R^d[b, v]): both factors are rows of powers, found by
        ``_PowerRows``. A missing neighbour contributes pi for its factor, the stationary
        marginal. Conditionals are undefined (NaN) when the unmasked tokens have probability 0.
        Inputs move to the language's device and the result comes back on x's device.
        """
        x = check_tokens(x, "x", num_ids=self.logits_width)
        batch, length = x.shape
        out_device = x.device
        x = x.to(self.transition.device)
        if positions is None:
            query = torch.arange(length, device=x.device).expand(batch, length)
        else:
            query = check_tokens(positions, "positions", num_ids=length).to(x.device)
            if query.shape[0] != batch:
                raise ValueError(
                    f"positions must have shape [B, P] with B = {batch}, got {tuple(query.shape)}"
                )

        tokens = x.gather(1, query)
        log_probs = torch.full(
            (batch, query.shape[1], self.logits_width), -math.inf, dtype=dtype, device=x.device
        )
        sequence, slot = (tokens != self.mask_id).nonzero(as_tuple=True)
        log_probs[sequence, slot, tokens[sequence, slot]] = 0

        left, right = _nearest_unmasked(x != self.mask_id)
        sequence, slot = (tokens == self.mask_id).nonzero(as_tuple=True)
        position = query[sequence, slot]
        left_position, right_position = left[sequence, position], right[sequence, position]
        has_left, has_right = left_position >= 0, right_position < length
        # Distance 0 asks _PowerRows for pi; the anchor of a missing neighbour is then irrelevant.
        left_distance = torch.where(has_left, position - left_position, 0)
        right_distance = torch.where(has_right, right_position - position, 0)
        left_token = torch.where(has_left, x[sequence, left_position.clamp(min=0)], 0)
        right_token = torch.where(has_right, x[sequence, right_position.clamp(max=length - 1)], 0)
        log_conditional = (
            self._forward_rows(left_token, left_distance).log()
            + self._backward_rows(right_token, right_distance).log()
            - self.stationary.log()
        )
        log_conditional = log_conditional - log_conditional.logsumexp(1, keepdim=True)
        log_probs[sequence, slot, : self.vocab_size] = log_conditional.to(dtype)
        return log_probs.to(out_device)
