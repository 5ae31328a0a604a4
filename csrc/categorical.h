// The sampling rule of mdm_ext::sample_categorical, shared by the CPU and CUDA kernels.
//
// Exact blockwise Gumbel-max. A row of V scores is cut into blocks of kBlock tokens.
//  1. Proposal: for every block b, an upper bound U_b on its mass, from float32 exponentials
//     (cheap: no per-token logarithm or random number). Pick the block with the largest
//     log U_b + G_b, G_b standard Gumbel noise from a 53-bit uniform: P(b) = U_b / sum U.
//  2. Acceptance: recompute the chosen block's mass Z_b in float64 and accept with probability
//     Z_b / U_b; otherwise start again with fresh block noise. Accepted blocks follow Z_b / sum Z
//     (rejection sampling), the float64 block masses. U_b bounds Z_b because the float32 error
//     of U_b is below kProposalSlack (derivation in docs of mdm_ext.ops.gumbel_argmax), so
//     acceptance is almost sure (>= 0.9998) and a round costs no second pass in practice.
//  3. Inside the chosen block: float64 Gumbel-max over its kBlock tokens.
// Every score is taken relative to the row's largest entry (logits: (x - max) / T, shifted
// before scaling; probabilities: times a power of two that brings the largest near 1), so that
// no logit or temperature overflows: tied maxima stay tied at any T > 0 (as T -> 0+ the draw
// tends to the uniform choice among them; T = 0 itself is the first argmax), and logits or
// probabilities up to the float64 maximum are drawn exactly.
// Random numbers depend only on (seed, offset, row, block or token, round); every reduction
// follows one canonical order (kLanes lanes, each summing kPerLane tokens in order, then an
// xor butterfly), which the CPU kernel replays, so CPU and CUDA agree bit for bit.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "det_math.h"

namespace mdm_ext {

constexpr int kLanes = 32;
constexpr int kPerLane = 8;
constexpr int kBlock = kLanes * kPerLane;  // tokens per block
constexpr int kMaxRounds = 64;  // rejection rounds; each is accepted with prob >= 0.9998
constexpr double kProposalSlack = 1e-4;

// What a row of scores holds.
enum ScoreKind : int64_t { kLogits = 0, kProbs = 1 };

// Why a row could not be sampled; 0 means it was.
enum RowError : int64_t { kRowOk = 0, kRowNonFinite = 1, kRowEmpty = 2 };

constexpr double kInf = std::numeric_limits<double>::infinity();

// A logit that makes a row unsampleable: NaN or +inf (both fail x < inf).
template <typename T>
MDM_HD bool is_nan_or_pos_inf(T x) {
  return !(x < std::numeric_limits<T>::infinity());
}

// A probability that makes a row unsampleable: negative, NaN or +inf.
MDM_HD bool is_bad_probability(double p) { return !(p >= 0.0) || p == kInf; }

// 1 / T as pre * inv: pre = 2^64 below T = 2^-64 keeps inv = 2^-64 / T finite in float64 for
// every T > 0, and in float32 down to T = 2^-192, below which every nonzero float32 gap
// (>= 2^-149) scaled by 1 / T is below -2^43 anyway.
template <typename acc_t>
struct InverseTemperature {
  acc_t pre;
  acc_t inv;
};

template <typename acc_t>
MDM_HD InverseTemperature<acc_t> inverse_temperature(double temperature) {
  const double pre = temperature < 0x1.0p-64 ? 0x1.0p64 : 1.0;
  return {static_cast<acc_t>(pre), static_cast<acc_t>(div(div(1.0, pre), temperature))};
}

// gap / T for a gap x - max <= 0 (or -inf), the gap scaled first (exact: a power of two) so that
// the product overflows only where gap / T does. Exactly 0 at the maximum, also when inv is inf.
// (A gap that itself overflows, between logits of both signs near the largest float, counts as
// -inf: exact unless T is above 4e36 for float32 gaps or 2e305 for float64 ones.)
template <typename acc_t>
MDM_HD acc_t scaled_gap(acc_t gap, InverseTemperature<acc_t> t) {
  return gap == acc_t(0) ? acc_t(0) : mul(mul(gap, t.pre), t.inv);
}

// Proposal term of one logit: e^{(x - block_max) / T} in float32, 1 at the block maximum.
// acc_t is double for float64 logits (so x - block_max keeps its accuracy) and float otherwise.
template <typename acc_t>
MDM_HD float proposal_term(acc_t x, acc_t block_max, InverseTemperature<acc_t> t) {
  return exp_f32(static_cast<float>(scaled_gap(add(x, -block_max), t)));
}

// The same term in float64: the block mass that acceptance compares against.
MDM_HD double exact_term(double x, double block_max, InverseTemperature<double> t) {
  return exp_f64(scaled_gap(add(x, -block_max), t));
}

// A power of two s with max_prob * s in [1, 4) for max_prob >= 2 (1 below): block sums of
// probabilities times s stay below 4 * kBlock, and the product is exact for every probability
// above max_prob * 2^-1022 (smaller ones are far below float64 resolution of the row's mass).
MDM_HD double probability_scale(double max_prob) {
  const int64_t exponent = int64_t(double_to_bits(max_prob) >> 52) - 1023;  // max_prob >= 0
  if (exponent <= 0) return 1.0;
  return bits_to_double(uint64_t(1023 - (exponent < 1022 ? exponent : 1022)) << 52);
}

// The arguments every row's draw shares.
struct SampleArgs {
  int64_t kind;
  double temperature;
  int64_t exclude;  // -1: none
  uint64_t seed;
  uint64_t offset;
};

// One row of scores with the excluded token masked out.
template <typename scalar_t>
struct RowScores {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const scalar_t* data;
  int64_t vocab;
  int64_t exclude;

  // A logit, -inf when excluded.
  MDM_HD acc_t logit(int64_t i) const {
    return i == exclude ? -std::numeric_limits<acc_t>::infinity() : static_cast<acc_t>(data[i]);
  }
  // A probability, 0 when excluded.
  MDM_HD double prob(int64_t i) const { return i == exclude ? 0.0 : static_cast<double>(data[i]); }
};

}  // namespace mdm_ext
