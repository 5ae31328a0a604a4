// CPU kernel of mdm_ext::sample_categorical: the rule of categorical.h, one row per task.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "../categorical.h"
#include "../op_checks.h"

namespace mdm_ext {
namespace {

// Host replay of the CUDA warp reduction: lane l sums tokens begin + l + kLanes * k in k order,
// then lanes combine by xor butterfly. Tokens past `end` add 0, as idle CUDA lanes do.
template <typename acc_t, typename Term>
acc_t canonical_block_sum(int64_t begin, int64_t end, const Term& term) {
  acc_t lane[kLanes] = {};
  if (end - begin == kBlock) {  // full block: a branch-free loop the compiler vectorises
    for (int k = 0; k < kPerLane; ++k)
      for (int l = 0; l < kLanes; ++l) lane[l] = add(lane[l], term(begin + k * kLanes + l));
  } else {
    for (int k = 0; k < kPerLane; ++k)
      for (int l = 0; l < kLanes; ++l) {
        const int64_t i = begin + k * kLanes + l;
        lane[l] = add(lane[l], i < end ? term(i) : acc_t(0));
      }
  }
  for (int step = kLanes / 2; step > 0; step /= 2) {
    acc_t next[kLanes];
    for (int l = 0; l < kLanes; ++l) next[l] = add(lane[l], lane[l ^ step]);
    std::copy(next, next + kLanes, lane);
  }
  return lane[0];
}

// Per-token random numbers (philox.h's token streams) of `count` <= kChunk consecutive tokens
// from a multiple of kChunk, in loops the compiler vectorises; where the CPU has AVX2, an AVX2
// clone is picked when the library loads. Vector IEEE operations round like scalar ones (and
// -ffp-contract=off forbids fusing), so the values are bit for bit those of token_uniform24 and
// token_uniform53, which the CUDA kernel calls.
constexpr int kChunk = 32;
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define MDM_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef MDM_VECTOR_CLONES
#define MDM_VECTOR_CLONES
#endif

// The random words of counters first_counter, ..., first_counter + count - 1, word-major:
// words[w * kChunk + c] is word w of counter first_counter + c.
inline void counter_words(uint64_t seed, uint64_t offset, uint32_t stream, uint64_t row_id,
                          uint64_t first_counter, int count, uint32_t* words) {
  for (int c = 0; c < count; ++c) {
    const Bits128 bits = random_bits(seed, offset, stream, row_id, first_counter + c);
    for (int w = 0; w < 4; ++w) words[w * kChunk + c] = bits.w[w];
  }
}

// Standard Gumbel noise of tokens first, ..., first + count - 1 (categorical.h, step 3).
MDM_VECTOR_CLONES void token_gumbel_chunk(uint64_t seed, uint64_t offset, uint64_t row_id, int64_t first,
                                          int count, double* noise) {
  const int counters = (count + 1) / 2;
  uint32_t words[4 * kChunk];
  counter_words(seed, offset, kTokenNoise, row_id, uint64_t(first) / 2, counters, words);
  // Words 0 and 1 of a counter make its even token's uniform, words 2 and 3 its odd token's.
  double even[kChunk / 2], odd[kChunk / 2];
  for (int c = 0; c < counters; ++c) even[c] = gumbel_f64(uniform53(words[c], words[kChunk + c]));
  for (int c = 0; c < counters; ++c) odd[c] = gumbel_f64(uniform53(words[2 * kChunk + c], words[3 * kChunk + c]));
  for (int c = 0; c < counters; ++c) noise[2 * c] = even[c], noise[2 * c + 1] = odd[c];
}

// The legacy recipe's denominators 1e-10 - log(u + 1e-10), u 24-bit uniforms, of tokens first,
// ..., first + count - 1.
MDM_VECTOR_CLONES void legacy_denominator_chunk(uint64_t seed, uint64_t offset, uint64_t row_id, int64_t first,
                                                int count, float* denominator) {
  const int counters = (count + 3) / 4;
  uint32_t words[4 * kChunk];
  counter_words(seed, offset, kLegacyNoise, row_id, uint64_t(first) / 4, counters, words);
  float by_word[4 * kChunk];
  for (int w = 0; w < 4; ++w)
    for (int c = 0; c < counters; ++c)
      by_word[w * kChunk + c] = add(1e-10f, -log_f32(add(uniform24(words[w * kChunk + c]), 1e-10f)));
  for (int c = 0; c < counters; ++c)
    for (int w = 0; w < 4; ++w) denominator[4 * c + w] = by_word[w * kChunk + c];
}

// Largest logit of [begin, end); `bad` is set by NaN or +inf.
template <typename acc_t, typename Row>
acc_t block_max(const Row& row, int64_t begin, int64_t end, bool& bad) {
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = begin; i < end; ++i) {
    const acc_t x = row.logit(i);
    bad |= is_nan_or_pos_inf(x);
    best = std::max(best, x);
  }
  return best;
}

// The row's draw under the exact blockwise rule (categorical.h).
template <typename scalar_t>
int64_t sample_row(const RowScores<scalar_t>& row, uint64_t row_id, const SampleArgs& args,
                   RowError& error) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  const InverseTemperature<acc_t> inv_t_acc = inverse_temperature<acc_t>(args.temperature);
  const InverseTemperature<double> inv_t = inverse_temperature<double>(args.temperature);
  const int64_t num_blocks = (row.vocab + kBlock - 1) / kBlock;
  auto block_end = [&](int64_t b) { return std::min(row.vocab, (b + 1) * kBlock); };
  // Float32 upper bound of a logit block's mass relative to e^{max / T}.
  auto upper_mass = [&](int64_t b, acc_t max) {
    const float sum = canonical_block_sum<float>(b * kBlock, block_end(b), [&](int64_t i) {
      return proposal_term<acc_t>(row.logit(i), max, inv_t_acc);
    });
    return mul(double(sum), 1.0 + kProposalSlack);
  };

  // The row's largest score, which every block's score is relative to (categorical.h), and
  // each logit block's maximum, found once for all rounds.
  bool bad = false;
  std::vector<acc_t> maxima(args.kind == kLogits ? num_blocks : 0);
  acc_t row_max = -std::numeric_limits<acc_t>::infinity();
  double max_prob = 0.0;
  if (args.kind == kLogits) {
    for (int64_t b = 0; b < num_blocks; ++b) {
      maxima[b] = block_max<acc_t>(row, b * kBlock, block_end(b), bad);
      row_max = std::max(row_max, maxima[b]);
    }
  } else {
    for (int64_t i = 0; i < row.vocab; ++i) {
      bad |= is_bad_probability(row.prob(i));
      max_prob = std::max(max_prob, row.prob(i));
    }
  }
  if (bad) return error = kRowNonFinite, -1;
  if (args.kind == kLogits ? row_max == -std::numeric_limits<acc_t>::infinity() : max_prob == 0.0)
    return error = kRowEmpty, -1;
  const double prob_scale = probability_scale(max_prob);

  // A row of one block draws it with certainty (it is not empty): proposing and accepting it
  // would only spend time, and the token stage's random numbers do not depend on the rounds.
  int64_t block = num_blocks == 1 ? 0 : -1;
  for (int round = 0; num_blocks > 1 && round < kMaxRounds; ++round) {
    double best = -kInf;
    block = -1;
    for (int64_t b = 0; b < num_blocks; ++b) {
      double log_mass;
      if (args.kind == kLogits) {
        if (maxima[b] == -std::numeric_limits<acc_t>::infinity()) continue;
        const double gap = scaled_gap(add(double(maxima[b]), -double(row_max)), inv_t);
        log_mass = add(log_f64(upper_mass(b, maxima[b])), gap);
      } else {
        const double mass = canonical_block_sum<double>(
            b * kBlock, block_end(b), [&](int64_t i) { return mul(row.prob(i), prob_scale); });
        if (mass == 0.0) continue;
        log_mass = log_f64(mass);
      }
      const double score =
          add(log_mass, gumbel_f64(uniform53(random_bits(args.seed, args.offset, kBlockNoise + round, row_id, b))));
      if (score > best) best = score, block = b;
    }
    if (block < 0) return error = kRowEmpty, -1;
    if (args.kind == kProbs) break;
    const double exact = canonical_block_sum<double>(block * kBlock, block_end(block), [&](int64_t i) {
      return exact_term(double(row.logit(i)), double(maxima[block]), inv_t);
    });
    const double accept = div(exact, upper_mass(block, maxima[block]));
    if (uniform53(random_bits(args.seed, args.offset, kAcceptNoise, row_id, round)) < accept) break;
  }

  int64_t choice = -1;
  double best = -kInf;
  for (int64_t first = block * kBlock; first < block_end(block); first += kChunk) {
    const int count = int(std::min<int64_t>(kChunk, block_end(block) - first));
    double base[kChunk], noise[kChunk + 1];  // an odd count fills one more
    if (args.kind == kLogits)
      for (int j = 0; j < count; ++j) base[j] = scaled_gap(add(double(row.logit(first + j)), -double(row_max)), inv_t);
    else
      for (int j = 0; j < count; ++j) base[j] = log_f64(row.prob(first + j));
    token_gumbel_chunk(args.seed, args.offset, row_id, first, count, noise);
    for (int j = 0; j < count; ++j) {
      const double score = add(base[j], noise[j]);
      if (base[j] != -kInf && score > best) best = score, choice = first + j;
    }
  }
  return choice;
}

// Temperature 0: the first index of the largest logit.
template <typename scalar_t>
int64_t argmax_row(const RowScores<scalar_t>& row, RowError& error) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  bool bad = false;
  int64_t choice = -1;
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < row.vocab; ++i) {
    const acc_t x = row.logit(i);
    bad |= is_nan_or_pos_inf(x);
    if (x > best) best = x, choice = i;
  }
  if (bad) return error = kRowNonFinite, -1;
  if (choice < 0) return error = kRowEmpty, -1;
  return choice;
}

// The common float32 recipe, (p / (1e-10 - log(u + 1e-10))).argmax() with 24-bit u, for
// studying its bias. Logits use e^{(x - max) / T} for p: the missing division by the row sum
// scales every score alike, so only float32 rounding differs.
template <typename scalar_t>
int64_t legacy_row(const RowScores<scalar_t>& row, uint64_t row_id, const SampleArgs& args,
                   RowError& error) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  bool bad = false, any = false;
  acc_t max = -std::numeric_limits<acc_t>::infinity();
  if (args.kind == kLogits) {
    max = block_max<acc_t>(row, 0, row.vocab, bad);
    any = max > -std::numeric_limits<acc_t>::infinity();
  } else {
    for (int64_t i = 0; i < row.vocab; ++i) {
      bad |= is_bad_probability(row.prob(i));
      any |= row.prob(i) > 0.0;
    }
  }
  if (bad) return error = kRowNonFinite, -1;
  if (!any) return error = kRowEmpty, -1;
  const InverseTemperature<acc_t> inv_t = inverse_temperature<acc_t>(args.temperature);
  int64_t choice = -1;
  float best = -1.0f;
  for (int64_t first = 0; first < row.vocab; first += kChunk) {
    const int count = int(std::min<int64_t>(kChunk, row.vocab - first));
    float p[kChunk], denominator[kChunk + 3];  // whole counters: up to 3 more
    if (args.kind == kLogits)
      for (int j = 0; j < count; ++j) p[j] = proposal_term<acc_t>(row.logit(first + j), max, inv_t);
    else
      for (int j = 0; j < count; ++j) p[j] = float(row.prob(first + j));
    legacy_denominator_chunk(args.seed, args.offset, row_id, first, count, denominator);
    for (int j = 0; j < count; ++j) {
      const float score = div(p[j], denominator[j]);
      if (score > best) best = score, choice = first + j;
    }
  }
  return choice;
}

at::Tensor sample_categorical_cpu(const at::Tensor& scores, int64_t kind, double temperature,
                                  int64_t exclude, int64_t seed, int64_t offset,
                                  bool legacy_float32) {
  check_sample_args(scores, kind, temperature, exclude, seed, offset);
  const at::Tensor rows = as_rows(scores, kind == kProbs ? "probs" : "logits");
  const int64_t num_rows = rows.size(0), vocab = rows.size(1), row_stride = rows.stride(0);
  at::Tensor out = at::empty({num_rows}, scores.options().dtype(at::kLong));
  int64_t* out_data = out.data_ptr<int64_t>();
  const SampleArgs args{kind, temperature, exclude, uint64_t(seed), uint64_t(offset)};
  std::atomic<int64_t> first_bad{INT64_MAX};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "sample_categorical", [&] {
    const scalar_t* data = rows.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / vocab);
    at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const RowScores<scalar_t> row{data + r * row_stride, vocab, exclude};
        RowError error = kRowOk;
        out_data[r] = temperature == 0.0 ? argmax_row(row, error)
                      : legacy_float32   ? legacy_row(row, uint64_t(r), args, error)
                                         : sample_row(row, uint64_t(r), args, error);
        if (error != kRowOk) {
          int64_t seen = first_bad.load();
          while (r * 4 + error < seen && !first_bad.compare_exchange_weak(seen, r * 4 + error)) {}
        }
      }
    });
  });
  if (first_bad.load() != INT64_MAX) raise_row_error(kind, first_bad.load());
  return out.view(scores.sizes().slice(0, scores.dim() - 1));
}

}  // namespace

TORCH_LIBRARY_IMPL(mdm_ext, CPU, m) { m.impl("sample_categorical", &sample_categorical_cpu); }

}  // namespace mdm_ext
