// CUDA kernels of the first-hitting bookkeeping: next unmask times (one thread per sequence)
// and the choice of k masked positions per row (one thread block per row, radix select of the
// k smallest random keys, 8 bits a pass).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../unmasking.h"

namespace mdm_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kRadixBits = 8;
constexpr int kBins = 1 << kRadixBits;

template <typename scalar_t>
__global__ void first_hit_kernel(const scalar_t* t, const int64_t* n_masked, scalar_t* out, int64_t batch,
                                 Schedule schedule, uint64_t seed, uint64_t offset) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const double u = uniform53(random_bits(seed, offset, kFirstHitNoise, b, 0));
  out[b] = n_masked[b] > 0 ? scalar_t(first_hit_time(schedule, double(t[b]), n_masked[b], u)) : t[b];
}

__global__ void choose_masked_kernel(const int64_t* x, int64_t length, int64_t mask_id, const int64_t* k,
                                     uint64_t seed, uint64_t offset, bool* chosen) {
  __shared__ int histogram[kBins];
  __shared__ uint64_t prefix;     // high bits of the k-th smallest key found so far
  __shared__ int64_t remaining;   // its rank among keys sharing those bits
  __shared__ int64_t sharing;     // how many keys share those bits
  const int64_t b = blockIdx.x;
  const int64_t* row = x + b * length;
  if (threadIdx.x == 0) {
    prefix = 0;
    remaining = k[b];
  }
  __syncthreads();
  if (remaining <= 0) return;
  for (int shift = 64 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int i = threadIdx.x; i < kBins; i += blockDim.x) histogram[i] = 0;
    __syncthreads();
    const uint64_t high_mask = shift + kRadixBits >= 64 ? 0 : ~uint64_t(0) << (shift + kRadixBits);
    for (int64_t pos = threadIdx.x; pos < length; pos += blockDim.x) {
      if (row[pos] != mask_id) continue;
      const uint64_t key = position_key(seed, offset, b, pos);
      if ((key & high_mask) == prefix) atomicAdd(&histogram[(key >> shift) & (kBins - 1)], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int digit = 0;
      while (digit < kBins - 1 && histogram[digit] < remaining) remaining -= histogram[digit++];
      prefix |= uint64_t(digit) << shift;
      sharing = histogram[digit];
    }
    __syncthreads();
  }
  // Keys below the threshold are chosen, and so are the keys equal to it when all of them are
  // needed: always, but for a tie of 64-bit keys, where positions are taken in order by one
  // thread, as the CPU kernel's (key, position) order does.
  const uint64_t threshold = prefix;
  const bool all_at_threshold = remaining >= sharing;
  for (int64_t pos = threadIdx.x; pos < length; pos += blockDim.x) {
    if (row[pos] != mask_id) continue;
    const uint64_t key = position_key(seed, offset, b, pos);
    if (key < threshold || (all_at_threshold && key == threshold)) chosen[b * length + pos] = true;
  }
  if (!all_at_threshold && threadIdx.x == 0) {
    for (int64_t pos = 0, left = remaining; pos < length && left > 0; ++pos) {
      if (row[pos] == mask_id && position_key(seed, offset, b, pos) == threshold) {
        chosen[b * length + pos] = true;
        --left;
      }
    }
  }
}

at::Tensor first_hit_times_cuda(const at::Tensor& t, const at::Tensor& n_masked, std::string_view schedule_name,
                                c10::ArrayRef<double> schedule_params, int64_t seed, int64_t offset) {
  const Schedule schedule = check_first_hit_args(t, n_masked, schedule_name, schedule_params, seed, offset);
  const c10::cuda::CUDAGuard guard(t.device());
  const at::Tensor t_in = t.contiguous(), n_in = n_masked.contiguous();
  at::Tensor out = at::empty_like(t_in);
  const int64_t batch = t_in.size(0);
  if (batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(t_in.scalar_type(), "first_hit_times_cuda", [&] {
    first_hit_kernel<scalar_t><<<unsigned((batch + kThreads - 1) / kThreads), kThreads, 0,
                                 c10::cuda::getCurrentCUDAStream()>>>(
        t_in.const_data_ptr<scalar_t>(), n_in.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>(), batch, schedule,
        uint64_t(seed), uint64_t(offset));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor choose_masked_cuda(const at::Tensor& x, int64_t mask_id, const at::Tensor& k, int64_t seed,
                              int64_t offset) {
  check_choose_args(x, mask_id, k, seed, offset);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor tokens = x.contiguous(), counts = k.contiguous();
  at::Tensor chosen = at::zeros(tokens.sizes(), tokens.options().dtype(at::kBool));
  if (tokens.numel() == 0) return chosen;
  TORCH_CHECK_VALUE(tokens.size(0) < (int64_t(1) << 31), "x has more than 2^31 rows");
  choose_masked_kernel<<<unsigned(tokens.size(0)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      tokens.const_data_ptr<int64_t>(), tokens.size(1), mask_id, counts.const_data_ptr<int64_t>(), uint64_t(seed),
      uint64_t(offset), chosen.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return chosen;
}

}  // namespace

TORCH_LIBRARY_IMPL(mdm_ext, CUDA, m) {
  m.impl("first_hit_times", &first_hit_times_cuda);
  m.impl("choose_masked", &choose_masked_cuda);
}

}  // namespace mdm_ext
