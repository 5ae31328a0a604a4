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
// Random numbers depend only on (seed, offset, row, block or token, round); every reduction
// follows one canonical order (kLanes lanes, each summing kPerLane tokens in order, then an
// xor butterfly), which the CPU kernel replays, so CPU and CUDA agree bit for bit.
#pragma once

#include <cstdint>
#include <limits>

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

// Proposal term of one logit: e^{(x - block_max) / T} in float32, 1 at the block maximum.
// acc_t is double for float64 logits (so x - block_max keeps its accuracy) and float otherwise.
template <typename acc_t>
MDM_HD float proposal_term(acc_t x, acc_t block_max, acc_t inv_temperature) {
  const acc_t d = add(x, -block_max);
  return d == acc_t(0) ? 1.0f : exp_f32(static_cast<float>(mul(d, inv_temperature)));
}

// The same term in float64: the block mass that acceptance compares against.
MDM_HD double exact_term(double x, double block_max, double inv_temperature) {
  return exp_f64(mul(add(x, -block_max), inv_temperature));
}

}  // namespace mdm_ext
