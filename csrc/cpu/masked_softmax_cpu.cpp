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

// log sum_{i != mask_id} e^{x_i}; -inf for a row whose every other logit is -inf.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
acc_t masked_logsumexp(const scalar_t* x, int64_t vocab, int64_t mask_id) {
  acc_t max = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < vocab; ++i)
    if (i != mask_id) max = std::max(max, acc_t(x[i]));
  if (!(std::abs(max) < std::numeric_limits<acc_t>::infinity())) return max;
  acc_t sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += i == mask_id ? acc_t(0) : acc_exp(acc_t(x[i]) - max);
  return max + std::log(sum);
}

at::Tensor masked_log_softmax_cpu(const at::Tensor& logits, int64_t mask_id) {
  check_floating(logits, "logits");
  const at::Tensor rows = as_rows(logits, "logits").contiguous();
  const int64_t num_rows = rows.size(0), vocab = rows.size(1);
  check_mask_id(mask_id, vocab);
  at::Tensor out = at::empty_like(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "masked_log_softmax", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, std::max<int64_t>(1, kGrainElements / vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = x + r * vocab;
        const acc_t lse = masked_logsumexp(xr, vocab, mask_id);
        for (int64_t i = 0; i < vocab; ++i)
          y[r * vocab + i] = i == mask_id ? -std::numeric_limits<acc_t>::infinity() : acc_t(xr[i]) - lse;
      }
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
    using acc_t = acc_type<scalar_t>;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dx = grad_in.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, std::max<int64_t>(1, kGrainElements / vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = r * vocab;
        acc_t grad_sum = 0;
        for (int64_t i = 0; i < vocab; ++i) grad_sum += i == mask_id ? acc_t(0) : acc_t(gp[base + i]);
        for (int64_t i = 0; i < vocab; ++i)
          dx[base + i] = i == mask_id ? acc_t(0) : acc_t(gp[base + i]) - acc_exp(acc_t(yp[base + i])) * grad_sum;
      }
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
        lse_p[r] = masked_logsumexp(xr, vocab, mask_id);
        if (t[r] == ignore_index) {
          loss_p[r] = 0;
        } else if (t[r] < 0 || t[r] >= vocab || t[r] == mask_id) {
          int64_t seen = first_bad.load();
          while (r < seen && !first_bad.compare_exchange_weak(seen, r)) {}
          loss_p[r] = 0;
        } else {
          loss_p[r] = (lse_p[r] - acc_t(xr[t[r]])) * (w ? w[r] : acc_t(1));
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
        const bool ignored = t[r] == ignore_index;
        const acc_t scale = ignored ? acc_t(0) : g[r] * (w ? w[r] : acc_t(1));
        const int64_t base = r * vocab;
        for (int64_t i = 0; i < vocab; ++i) {
          const acc_t p = i == mask_id || ignored ? acc_t(0) : acc_exp(acc_t(x[base + i]) - lse_p[r]);
          dx[base + i] = scale * (p - acc_t(i == t[r]));
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
