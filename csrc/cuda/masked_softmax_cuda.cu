// CUDA kernels of the masked log-softmax and the fused masked cross-entropy: one row per
// thread block; the mask column is excluded from the normaliser.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>

#include "../masked_softmax.h"
#include "reduce.cuh"

namespace mdm_ext {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

unsigned grid_for(int64_t rows) { return unsigned(std::min<int64_t>(std::max<int64_t>(rows, 1), 1 << 20)); }

// log sum_{i != mask_id} e^{x_i} of one row as max + log_sum (masked_softmax.h), on every thread
// of the block.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
__device__ LogNormaliser<acc_t> masked_log_normaliser(const scalar_t* x, int64_t vocab, int64_t mask_id,
                                                      acc_t* scratch) {
  acc_t max = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
    if (i != mask_id) max = fmax(max, acc_t(x[i]));
  max = block_reduce(max, [](acc_t a, acc_t b) { return fmax(a, b); }, scratch);
  if (!(fabs(max) < std::numeric_limits<acc_t>::infinity())) return {max, acc_t(0)};
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
    if (i != mask_id) sum += acc_exp(acc_t(x[i]) - max);
  sum = block_reduce(sum, [](acc_t a, acc_t b) { return a + b; }, scratch);
  return {max, log(sum)};
}

template <typename scalar_t>
__global__ void log_softmax_kernel(const scalar_t* x, scalar_t* y, int64_t rows, int64_t vocab, int64_t mask_id) {
  using acc_t = acc_type<scalar_t>;
  __shared__ acc_t scratch[kThreads / kWarpSize];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* xr = x + r * vocab;
    const LogNormaliser<acc_t> norm = masked_log_normaliser(xr, vocab, mask_id, scratch);
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
      y[r * vocab + i] = i == mask_id ? -std::numeric_limits<acc_t>::infinity() : norm.log_prob(acc_t(xr[i]));
  }
}

template <typename scalar_t>
__global__ void log_softmax_backward_kernel(const scalar_t* g, const scalar_t* y, scalar_t* dx, int64_t rows,
                                            int64_t vocab, int64_t mask_id) {
  using acc_t = acc_type<scalar_t>;
  __shared__ acc_t scratch[kThreads / kWarpSize];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * vocab;
    acc_t grad_sum = 0;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
      if (i != mask_id) grad_sum += acc_t(g[base + i]);
    grad_sum = block_reduce(grad_sum, [](acc_t a, acc_t b) { return a + b; }, scratch);
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
      dx[base + i] = i == mask_id ? acc_t(0) : acc_t(g[base + i]) - acc_exp(acc_t(y[base + i])) * grad_sum;
  }
}

template <typename scalar_t>
__global__ void cross_entropy_kernel(const scalar_t* x, const int64_t* target, const acc_type<scalar_t>* weight,
                                     acc_type<scalar_t>* loss, acc_type<scalar_t>* lse, int64_t rows, int64_t vocab,
                                     int64_t mask_id, int64_t ignore_index, unsigned long long* first_bad) {
  using acc_t = acc_type<scalar_t>;
  __shared__ acc_t scratch[kThreads / kWarpSize];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* xr = x + r * vocab;
    const LogNormaliser<acc_t> norm = masked_log_normaliser(xr, vocab, mask_id, scratch);
    if (threadIdx.x != 0) continue;
    lse[r] = norm.max + norm.log_sum;
    const int64_t t = target[r];
    if (t == ignore_index) {
      loss[r] = 0;
    } else if (t < 0 || t >= vocab || t == mask_id) {
      atomicMin(first_bad, static_cast<unsigned long long>(r));
      loss[r] = 0;
    } else {
      loss[r] = -norm.log_prob(acc_t(xr[t])) * (weight ? weight[r] : acc_t(1));
    }
  }
}

template <typename scalar_t>
__global__ void cross_entropy_backward_kernel(const acc_type<scalar_t>* grad, const scalar_t* x, const int64_t* target,
                                              const acc_type<scalar_t>* weight, const acc_type<scalar_t>* lse,
                                              scalar_t* dx, int64_t rows, int64_t vocab, int64_t mask_id,
                                              int64_t ignore_index) {
  using acc_t = acc_type<scalar_t>;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t t = target[r];
    const bool ignored = t == ignore_index;
    const acc_t scale = ignored ? acc_t(0) : grad[r] * (weight ? weight[r] : acc_t(1));
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const int64_t at = r * vocab + i;
      const acc_t p = i == mask_id || ignored ? acc_t(0) : acc_exp(acc_t(x[at]) - lse[r]);
      // scale * p - scale at the target rounds once, where scale * (p - 1) rounds p - 1 first.
      dx[at] = scale * p - (i == t ? scale : acc_t(0));
    }
  }
}

at::Tensor masked_log_softmax_cuda(const at::Tensor& logits, int64_t mask_id) {
  check_floating(logits, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor rows = as_rows(logits, "logits").contiguous();
  check_mask_id(mask_id, rows.size(1));
  at::Tensor out = at::empty_like(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "masked_log_softmax_cuda", [&] {
    log_softmax_kernel<scalar_t><<<grid_for(rows.size(0)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rows.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows.size(0), rows.size(1), mask_id);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.view(logits.sizes());
}

at::Tensor masked_log_softmax_backward_cuda(const at::Tensor& grad_out, const at::Tensor& out, int64_t mask_id) {
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor y = as_rows(out, "out").contiguous();
  const at::Tensor g = grad_out.reshape(y.sizes()).contiguous();
  check_mask_id(mask_id, y.size(1));
  at::Tensor grad_in = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "masked_log_softmax_backward_cuda", [&] {
    log_softmax_backward_kernel<scalar_t><<<grid_for(y.size(0)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), y.size(0),
        y.size(1), mask_id);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_in.view(out.sizes());
}

std::tuple<at::Tensor, at::Tensor> masked_cross_entropy_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                             const std::optional<at::Tensor>& weight, int64_t mask_id,
                                                             int64_t ignore_index) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CrossEntropyRows rows = cross_entropy_rows(logits, target, weight, mask_id);
  const int64_t num_rows = rows.logits.size(0), vocab = rows.logits.size(1);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({num_rows}, logits.options().dtype(acc));
  at::Tensor lse = at::empty({num_rows}, logits.options().dtype(acc));
  at::Tensor first_bad = at::full({1}, INT64_MAX, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.logits.scalar_type(), "masked_cross_entropy_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    cross_entropy_kernel<scalar_t><<<grid_for(num_rows), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rows.logits.const_data_ptr<scalar_t>(), rows.target.const_data_ptr<int64_t>(),
        rows.weight.defined() ? rows.weight.const_data_ptr<acc_t>() : nullptr, loss.data_ptr<acc_t>(),
        lse.data_ptr<acc_t>(), num_rows, vocab, mask_id, ignore_index,
        reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  raise_bad_target(first_bad.item<int64_t>(), mask_id, vocab);
  return {loss.view(target.sizes()), lse};
}

at::Tensor masked_cross_entropy_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                              const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                              const at::Tensor& lse, int64_t mask_id, int64_t ignore_index) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CrossEntropyRows rows = cross_entropy_rows(logits, target, weight, mask_id);
  const int64_t num_rows = rows.logits.size(0), vocab = rows.logits.size(1);
  const at::Tensor grad = grad_loss.reshape({-1}).to(lse.scalar_type()).contiguous();
  const at::Tensor lse_rows = lse.contiguous();
  at::Tensor grad_logits = at::empty_like(rows.logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.logits.scalar_type(), "masked_cross_entropy_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    cross_entropy_backward_kernel<scalar_t><<<grid_for(num_rows), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<acc_t>(), rows.logits.const_data_ptr<scalar_t>(), rows.target.const_data_ptr<int64_t>(),
        rows.weight.defined() ? rows.weight.const_data_ptr<acc_t>() : nullptr, lse_rows.const_data_ptr<acc_t>(),
        grad_logits.data_ptr<scalar_t>(), num_rows, vocab, mask_id, ignore_index);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_logits.view(logits.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(mdm_ext, CUDA, m) {
  m.impl("masked_log_softmax", &masked_log_softmax_cuda);
  m.impl("masked_log_softmax_backward", &masked_log_softmax_backward_cuda);
  m.impl("masked_cross_entropy", &masked_cross_entropy_cuda);
  m.impl("masked_cross_entropy_backward", &masked_cross_entropy_backward_cuda);
}

}  // namespace mdm_ext
