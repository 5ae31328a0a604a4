// CUDA kernel of mdm_ext::sample_categorical: the rule of categorical.h, one row per thread
// block of kLanes * (kBlock / kLanes) threads; warp w proposes blocks w, w + 8, ... and each of
// its lanes holds kPerLane tokens of a block, in the canonical order the CPU kernel replays.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>

#include "../categorical.h"
#include "../op_checks.h"
#include "reduce.cuh"

namespace mdm_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
static_assert(kLanes == kWarpSize, "a block's lanes are a warp's lanes");
static_assert(kBlock == kThreads, "the final in-block draw gives each thread one token");

template <typename T>
__device__ T warp_sum(T value) {
  return warp_reduce(value, [](T a, T b) { return add(a, b); });
}

// Loads logit block b into the lanes' registers (-inf past the row's end) and returns the
// block's largest logit, reduced over the warp.
template <typename scalar_t>
__device__ typename RowScores<scalar_t>::acc_t load_block(const RowScores<scalar_t>& row, int64_t b,
                                                          typename RowScores<scalar_t>::acc_t (&values)[kPerLane]) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t begin = b * kBlock, end = min(row.vocab, begin + kBlock);
  acc_t max = -std::numeric_limits<acc_t>::infinity();
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t i = begin + k * kLanes + lane;
    values[k] = i < end ? row.logit(i) : -std::numeric_limits<acc_t>::infinity();
    max = values[k] > max ? values[k] : max;
  }
  return warp_reduce(max, [](acc_t a, acc_t c) { return a > c ? a : c; });
}

// One block's proposal, computed by a warp: log of the upper bound of its mass (logits) or of
// its mass (probs), relative to the row's largest score (categorical.h); -inf for an empty block.
template <typename scalar_t>
__device__ double propose_block(const RowScores<scalar_t>& row, int64_t b, const SampleArgs& args,
                                typename RowScores<scalar_t>::acc_t row_max, double prob_scale) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t begin = b * kBlock, end = min(row.vocab, begin + kBlock);
  if (args.kind == kLogits) {
    acc_t values[kPerLane];
    const acc_t max = load_block(row, b, values);
    if (max == -std::numeric_limits<acc_t>::infinity()) return -kInf;
    const InverseTemperature<acc_t> inv_t = inverse_temperature<acc_t>(args.temperature);
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t i = begin + k * kLanes + lane;
      sum = add(sum, i < end ? proposal_term<acc_t>(values[k], max, inv_t) : 0.0f);
    }
    sum = warp_sum(sum);
    return add(log_f64(mul(double(sum), 1.0 + kProposalSlack)),
               scaled_gap(add(double(max), -double(row_max)), inverse_temperature<double>(args.temperature)));
  }
  double sum = 0.0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t i = begin + k * kLanes + lane;
    sum = add(sum, i < end ? mul(row.prob(i), prob_scale) : 0.0);
  }
  sum = warp_sum(sum);
  return sum == 0.0 ? -kInf : log_f64(sum);
}

// Acceptance probability of logit block b, computed by a warp: float64 mass / float32 bound.
template <typename scalar_t>
__device__ double acceptance(const RowScores<scalar_t>& row, int64_t b, const SampleArgs& args) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t begin = b * kBlock, end = min(row.vocab, begin + kBlock);
  acc_t values[kPerLane];
  const acc_t max = load_block(row, b, values);
  const InverseTemperature<acc_t> inv_t_acc = inverse_temperature<acc_t>(args.temperature);
  const InverseTemperature<double> inv_t = inverse_temperature<double>(args.temperature);
  float bound = 0.0f;
  double exact = 0.0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t i = begin + k * kLanes + lane;
    bound = add(bound, i < end ? proposal_term<acc_t>(values[k], max, inv_t_acc) : 0.0f);
    exact = add(exact, i < end ? exact_term(double(values[k]), double(max), inv_t) : 0.0);
  }
  return div(warp_sum(exact), mul(double(warp_sum(bound)), 1.0 + kProposalSlack));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(const scalar_t* __restrict__ scores, int64_t num_rows, int64_t vocab, int64_t row_stride,
                       SampleArgs args, int64_t* __restrict__ out, unsigned long long* first_bad) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  __shared__ ScoredIndex<double> scratch[kWarps];
  __shared__ double scratch_top[kWarps];
  __shared__ int scratch_bad[kWarps];
  __shared__ int accepted;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t num_blocks = (vocab + kBlock - 1) / kBlock;
  for (int64_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const RowScores<scalar_t> row{scores + r * row_stride, vocab, args.exclude};
    // The row's largest score (a logit, or a probability), which every block's score is
    // relative to, and the row's validity.
    double top = -kInf;
    bool bad = false;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const double score = args.kind == kLogits ? double(row.logit(i)) : row.prob(i);
      bad |= args.kind == kLogits ? is_nan_or_pos_inf(score) : is_bad_probability(score);
      top = score > top ? score : top;
    }
    top = block_reduce(top, [](double a, double c) { return a > c ? a : c; }, scratch_top);
    bad = block_reduce(int(bad), [](int a, int c) { return a | c; }, scratch_bad);
    if (bad || !(top > (args.kind == kLogits ? -kInf : 0.0))) {
      if (threadIdx.x == 0) {
        record_row_error(first_bad, r, bad ? kRowNonFinite : kRowEmpty);
        out[r] = -1;
      }
      continue;
    }
    const acc_t row_max = static_cast<acc_t>(top);  // exact for logits, unused for probs
    const double prob_scale = args.kind == kProbs ? probability_scale(top) : 1.0;
    // One block is drawn with certainty (as on the CPU): skip its proposal and acceptance.
    int64_t block = num_blocks == 1 ? 0 : -1;
    for (int round = 0; num_blocks > 1 && round < kMaxRounds; ++round) {
      ScoredIndex<double> best{-kInf, -1};
      for (int64_t b = warp; b < num_blocks; b += kWarps) {
        const double log_mass = propose_block(row, b, args, row_max, prob_scale);
        if (lane == 0 && log_mass > -kInf) {
          const double score =
              add(log_mass, gumbel_f64(uniform53(random_bits(args.seed, args.offset, kBlockNoise + round, r, b))));
          best = better(best, ScoredIndex<double>{score, b});
        }
      }
      best = block_argmax(best, scratch);
      block = best.index;
      if (block < 0) {
        if (threadIdx.x == 0) record_row_error(first_bad, r, kRowEmpty);
        break;
      }
      if (args.kind == kProbs) break;
      if (warp == 0) {
        const double accept = acceptance(row, block, args);
        if (lane == 0)
          accepted = uniform53(random_bits(args.seed, args.offset, kAcceptNoise, r, round)) < accept;
      }
      __syncthreads();
      if (accepted) break;
    }
    if (block < 0) {
      if (threadIdx.x == 0) out[r] = -1;
      __syncthreads();
      continue;
    }
    // Float64 Gumbel-max inside the chosen block: one token per thread.
    const int64_t i = block * kBlock + threadIdx.x;
    ScoredIndex<double> token{-kInf, -1};
    if (i < vocab) {
      const double base = args.kind == kLogits ? scaled_gap(add(double(row.logit(i)), -double(row_max)),
                                                            inverse_temperature<double>(args.temperature))
                                               : log_f64(row.prob(i));
      if (base > -kInf)
        token = {add(base, gumbel_f64(token_uniform53(args.seed, args.offset, kTokenNoise, r, i))), i};
    }
    token = block_argmax(token, scratch);
    if (threadIdx.x == 0) out[r] = token.index;
  }
}

// Temperature 0 (argmax of logits) and the legacy float32 recipe: both a per-row argmax of a
// per-token score, after a first pass for the row maximum and validity.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    argmax_rows_kernel(const scalar_t* __restrict__ scores, int64_t num_rows, int64_t vocab, int64_t row_stride,
                       SampleArgs args, bool legacy, int64_t* __restrict__ out, unsigned long long* first_bad) {
  using acc_t = typename RowScores<scalar_t>::acc_t;
  __shared__ ScoredIndex<float> scratch_f[kWarps];
  __shared__ ScoredIndex<acc_t> scratch_acc[kWarps];
  __shared__ int flags[kWarps];
  for (int64_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const RowScores<scalar_t> row{scores + r * row_stride, vocab, args.exclude};
    bool bad = false, any = false;
    ScoredIndex<acc_t> max{-std::numeric_limits<acc_t>::infinity(), -1};
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (args.kind == kLogits) {
        const acc_t x = row.logit(i);
        bad |= is_nan_or_pos_inf(x);
        if (x > -std::numeric_limits<acc_t>::infinity()) max = better(max, ScoredIndex<acc_t>{x, i});
      } else {
        bad |= is_bad_probability(row.prob(i));
        any |= row.prob(i) > 0.0;
      }
    }
    max = block_argmax(max, scratch_acc);
    const int code = block_reduce(int(bad) * 2 + int(any), [](int a, int b) { return a | b; }, flags);
    bad = code & 2;
    any = args.kind == kLogits ? max.index >= 0 : (code & 1);
    if (bad || !any) {
      if (threadIdx.x == 0) {
        record_row_error(first_bad, r, bad ? kRowNonFinite : kRowEmpty);
        out[r] = -1;
      }
      continue;
    }
    if (!legacy) {
      if (threadIdx.x == 0) out[r] = max.index;
      continue;
    }
    const InverseTemperature<acc_t> inv_t = inverse_temperature<acc_t>(args.temperature);
    ScoredIndex<float> best{-1.0f, -1};
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float p = args.kind == kLogits ? proposal_term<acc_t>(row.logit(i), max.score, inv_t)
                                           : float(row.prob(i));
      const float u = token_uniform24(args.seed, args.offset, kLegacyNoise, r, i);
      best = better(best, ScoredIndex<float>{div(p, add(1e-10f, -log_f32(add(u, 1e-10f)))), i});
    }
    best = block_argmax(best, scratch_f);
    if (threadIdx.x == 0) out[r] = best.index;
  }
}

at::Tensor sample_categorical_cuda(const at::Tensor& scores, int64_t kind, double temperature, int64_t exclude,
                                   int64_t seed, int64_t offset, bool legacy_float32) {
  check_sample_args(scores, kind, temperature, exclude, seed, offset);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor rows = as_rows(scores, kind == kProbs ? "probs" : "logits");
  const int64_t num_rows = rows.size(0), vocab = rows.size(1);
  at::Tensor out = at::empty({num_rows}, scores.options().dtype(at::kLong));
  if (num_rows == 0) return out.view(scores.sizes().slice(0, scores.dim() - 1));
  at::Tensor first_bad = at::full({1}, INT64_MAX, scores.options().dtype(at::kLong));
  const SampleArgs args{kind, temperature, exclude, uint64_t(seed), uint64_t(offset)};
  const unsigned grid = unsigned(std::min<int64_t>(num_rows, 1 << 20));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto* bad_ptr = reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "sample_categorical_cuda", [&] {
    const scalar_t* data = rows.const_data_ptr<scalar_t>();
    if (temperature == 0.0 || legacy_float32) {
      argmax_rows_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(data, num_rows, vocab, rows.stride(0), args,
                                                                  temperature != 0.0, out.data_ptr<int64_t>(), bad_ptr);
    } else {
      sample_rows_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(data, num_rows, vocab, rows.stride(0), args,
                                                                  out.data_ptr<int64_t>(), bad_ptr);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t bad = first_bad.item<int64_t>();  // one sync: errors must surface as exceptions
  if (bad != INT64_MAX) raise_row_error(kind, bad);
  return out.view(scores.sizes().slice(0, scores.dim() - 1));
}

}  // namespace

TORCH_LIBRARY_IMPL(mdm_ext, CUDA, m) { m.impl("sample_categorical", &sample_categorical_cuda); }

}  // namespace mdm_ext
