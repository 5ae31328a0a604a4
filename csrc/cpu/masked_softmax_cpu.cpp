// CPU kernels of the masked log-softmax and the fused masked cross-entropy: the [MASK] column
// is excluded from the normaliser (its log-probability is -inf, its gradient 0).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../masked_softmax.h"

namespace mdm_ext {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int64_t kGrainElements = 32768;

// The row kernels below are compiled twice on x86-64 (with glibc, whose ifunc picks one for the
// CPU at hand at load time), for AVX2 and for the baseline ISA; flatten inlines everything they
// call into each copy, so that the lane loops vectorise at full width. Both copies do the same
// IEEE operations in the same order (-ffp-contract=off: no fused multiply-add), so results do
// not depend on the CPU.
#if defined(__x86_64__) && defined(__GLIBC__)
#define MDM_EXT_ROW_KERNEL __attribute__((target_clones("avx2", "default"), flatten))
#else
#define MDM_EXT_ROW_KERNEL
#endif

// Row reductions run in kSumLanes independent lanes, so that their loops vectorise.
constexpr int kSumLanes = 32;
constexpr int kGroup = 8;  // tokens per lane summed in acc_t before joining the float64 lane

// Largest x_i, i != mask_id (NaN is skipped, as by std::max; the sum below propagates it). The
// two ranges around the mask keep the loops free of a per-token test.
template <typename acc_t, typename scalar_t>
acc_t masked_max(const scalar_t* x, int64_t vocab, int64_t mask_id) {
  acc_t lane[kSumLanes];
  std::fill(lane, lane + kSumLanes, -std::numeric_limits<acc_t>::infinity());
  auto accumulate = [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kSumLanes <= end; i += kSumLanes)
      for (int l = 0; l < kSumLanes; ++l) lane[l] = std::max(lane[l], acc_t(x[i + l]));
    for (; i < end; ++i) lane[0] = std::max(lane[0], acc_t(x[i]));
  };
  accumulate(0, mask_id);
  accumulate(mask_id + 1, vocab);
  return *std::max_element(lane, lane + kSumLanes);
}

// sum_{i != mask_id} term(i) in float64 lanes, each fed acc_t partial sums of kGroup tokens, and
// combined pairwise. A float32 sum along the row fails at large V: once it holds the maximum's
// term 1 it drops every term below 2^-25, and thousands of those add up (torch's vectorised
// float32 log_softmax sums 8 or 16 lanes so); a partial of kGroup terms drops at most
// kGroup - 1 of them, and the float32 partials keep the loop at float32 speed.
template <typename acc_t, typename Term>
double masked_sum(int64_t vocab, int64_t mask_id, const Term& term) {
  double lane[kSumLanes] = {};
  auto accumulate = [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kSumLanes * kGroup <= end; i += kSumLanes * kGroup) {
      acc_t partial[kSumLanes] = {};
      for (int k = 0; k < kGroup; ++k)
        for (int l = 0; l < kSumLanes; ++l) partial[l] += term(i + k * kSumLanes + l);
      for (int l = 0; l < kSumLanes; ++l) lane[l] += double(partial[l]);
    }
    for (; i < end; ++i) lane[i % kSumLanes] += double(term(i));
  };
  accumulate(0, mask_id);
  accumulate(mask_id + 1, vocab);
  for (int width = kSumLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  return lane[0];
}

// log sum_{i != mask_id} e^{x_i} = max + log_sum (masked_softmax.h); log_sum = 0 where max is
// infinite (every other logit -inf, or one +inf).
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
MDM_EXT_ROW_KERNEL LogNormaliser<acc_t> masked_log_normaliser(const scalar_t* x, int64_t vocab, int64_t mask_id) {
  const acc_t max = masked_max<acc_t>(x, vocab, mask_id);
  if (!(std::abs(max) < std::numeric_limits<acc_t>::infinity())) return {max, acc_t(0)};
  const double sum = masked_sum<acc_t>(vocab, mask_id, [&](int64_t i) { return acc_exp(acc_t(x[i]) - max); });
  return {max, acc_t(std::log(sum))};
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
MDM_EXT_ROW_KERNEL void log_softmax_row(const scalar_t* x, scalar_t* y, int64_t vocab, int64_t mask_id) {
  const LogNormaliser<acc_t> norm = masked_log_normaliser(x, vocab, mask_id);
  for (int64_t i = 0; i < vocab; ++i) y[i] = norm.log_prob(acc_t(x[i]));
  y[mask_id] = -std::numeric_limits<acc_t>::infinity();
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
MDM_EXT_ROW_KERNEL void log_softmax_backward_row(const scalar_t* g, const scalar_t* y, scalar_t* dx, int64_t vocab,
                                                 int64_t mask_id) {
  const acc_t grad_sum = acc_t(masked_sum<acc_t>(vocab, mask_id, [&](int64_t i) { return acc_t(g[i]); }));
  for (int64_t i = 0; i < vocab; ++i) dx[i] = acc_t(g[i]) - acc_exp(acc_t(y[i])) * grad_sum;
  dx[mask_id] = acc_t(0);
}

// scale * (softmax_i - [i == target]) with softmax_i = e^{x_i - lse}, 0 in the mask column. At
// the target it is computed as scale * p - scale, which rounds once at the result's magnitude
// (scale * (p - 1) would first round p - 1, losing a small p entirely).
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
MDM_EXT_ROW_KERNEL void cross_entropy_backward_row(const scalar_t* x, scalar_t* dx, int64_t vocab, int64_t mask_id,
                                                   int64_t target, acc_t lse, acc_t scale) {
  auto grad = [&](int64_t i) {
    const acc_t p = i == mask_id ? acc_t(0) : acc_exp(acc_t(x[i]) - lse);
    return scale * p - (i == target ? scale : acc_t(0));
  };
  // grad(i) without its two exceptions, which are then written over.
  for (int64_t i = 0; i < vocab; ++i) dx[i] = scale * acc_exp(acc_t(x[i]) - lse);
  dx[mask_id] = grad(mask_id);
  if (target >= 0 && target < vocab) dx[target] = grad(target);
}

at::Tensor masked_log_softmax_cpu(const at::Tensor& logits, int64_t mask_id) {
  check_floating(logits, "logits");
  const at::Tensor rows = as_rows(logits, "logits").contiguous();
  const int64_t num_rows = rows.size(0), vocab = rows.size(1);
  check_mask_id(mask_id, vocab);
  at::Tensor out = at::empty_like(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "masked_log_softmax", [&] {
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, std::max<int64_t>(1, kGrainElements / vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) log_softmax_row(x + r * vocab, y + r * vocab, vocab, mask_id);
    });
  });
  return out.view(logits.sizes());
}

// d/dx of y = masked_log_softmax(x): g - softmax(x) * sum(g), 0 in the mask column.
at::Tensor masked_log_softmax_backward_cpu(const at::Tensor& grad_out, const at::Tensor& out,
                                           int64_t mask_id) {
  const at::Tensor y = as_rows(out, "out").contiguous();
  const at::Tensor g = grad_out.reshape(y.sizes()).contiguous();
  const int64_t num_rows = y.size(0), vocab = y.size(1);
  check_mask_id(mask_id, vocab);
  at::Tensor grad_in = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "masked_log_softmax_backward", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dx = grad_in.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, std::max<int64_t>(1, kGrainElements / vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        log_softmax_backward_row(gp + r * vocab, yp + r * vocab, dx + r * vocab, vocab, mask_id);
    });
  });
  return grad_in.view(out.sizes());
}

// loss[n] = weight[n] * (logsumexp_{i != mask} x[n, i] - x[n, target[n]]); 0 where target is
// ignore_index. Also returns the logsumexp, which the backward needs.
std::tuple<at::Tensor, at::Tensor> masked_cross_entropy_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                            const std::optional<at::Tensor>& weight,
                                                            int64_t mask_id, int64_t ignore_index) {
  const CrossEntropyRows rows = cross_entropy_rows(logits, target, weight, mask_id);
  const int64_t num_rows = rows.logits.size(0), vocab = rows.logits.size(1);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({num_rows}, logits.options().dtype(acc));
  at::Tensor lse = at::empty({num_rows}, logits.options().dtype(acc));
  std::atomic<int64_t> first_bad{INT64_MAX};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.logits.scalar_type(), "masked_cross_entropy", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* x = rows.logits.const_data_ptr<scalar_t>();
    const int64_t* t = rows.target.const_data_ptr<int64_t>();
    const acc_t* w = rows.weight.defined() ? rows.weight.const_data_ptr<acc_t>() : nullptr;
    acc_t* loss_p = loss.data_ptr<acc_t>();
    acc_t* lse_p = lse.data_ptr<acc_t>();
    at::parallel_for(0, num_rows, std::max<int64_t>(1, kGrainElements / vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = x + r * vocab;
        const LogNormaliser<acc_t> norm = masked_log_normaliser(xr, vocab, mask_id);
        lse_p[r] = norm.max + norm.log_sum;
        if (t[r] == ignore_index) {
          loss_p[r] = 0;
        } else if (t[r] < 0 || t[r] >= vocab || t[r] == mask_id) {
          int64_t seen = first_bad.load();
          while (r < seen && !first_bad.compare_exchange_weak(seen, r)) {}
          loss_p[r] = 0;
        } else {
          loss_p[r] = -norm.log_prob(acc_t(xr[t[r]])) * (w ? w[r] : acc_t(1));
        }
      }
    });
  });
  raise_bad_target(first_bad.load(), mask_id, vocab);
  return {loss.view(target.sizes()), lse};
}

// d loss[n] / d x[n, i] = grad[n] * weight[n] * (softmax_i - [i == target]), 0 in the mask
// column and on ignored rows: written in one pass, no [N, V] temporary.
at::Tensor masked_cross_entropy_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                             const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                             const at::Tensor& lse, int64_t mask_id, int64_t ignore_index) {
  const CrossEntropyRows rows = cross_entropy_rows(logits, target, weight, mask_id);
  const int64_t num_rows = rows.logits.size(0), vocab = rows.logits.size(1);
  const at::Tensor grad = grad_loss.reshape({-1}).to(lse.scalar_type()).contiguous();
  const at::Tensor lse_rows = lse.contiguous();
  at::Tensor grad_logits = at::empty_like(rows.logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.logits.scalar_type(), "masked_cross_entropy_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* x = rows.logits.const_data_ptr<scalar_t>();
    const int64_t* t = rows.target.const_data_ptr<int64_t>();
    const acc_t* w = rows.weight.defined() ? rows.weight.const_data_ptr<acc_t>() : nullptr;
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const acc_t* lse_p = lse_rows.const_data_ptr<acc_t>();
    scalar_t* dx = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, std::max<int64_t>(1, kGrainElements / vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* dxr = dx + r * vocab;
        if (t[r] == ignore_index) {
          std::fill(dxr, dxr + vocab, scalar_t(0));
        } else {
          const acc_t scale = g[r] * (w ? w[r] : acc_t(1));
          cross_entropy_backward_row(x + r * vocab, dxr, vocab, mask_id, t[r], lse_p[r], scale);
        }
      }
    });
  });
  return grad_logits.view(logits.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(mdm_ext, CPU, m) {
  m.impl("masked_log_softmax", &masked_log_softmax_cpu);
  m.impl("masked_log_softmax_backward", &masked_log_softmax_backward_cpu);
  m.impl("masked_cross_entropy", &masked_cross_entropy_cpu);
  m.impl("masked_cross_entropy_backward", &masked_cross_entropy_backward_cpu);
}

}  // namespace mdm_ext
