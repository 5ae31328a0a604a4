// Block-wide reductions for kernels that run one row per thread block.
#pragma once

#include <cstdint>

namespace mdm_ext {

constexpr int kWarpSize = 32;
constexpr unsigned kFullWarp = 0xffffffffu;

template <typename T, typename Op>
__device__ T warp_reduce(T value, Op op) {
  for (int step = kWarpSize / 2; step > 0; step /= 2) value = op(value, __shfl_xor_sync(kFullWarp, value, step));
  return value;
}

// Reduce over the whole thread block; every thread gets the result. `scratch` holds one value
// per warp; the call synchronises.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  value = warp_reduce(value, op);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = scratch[0];
  for (int w = 1; w < num_warps; ++w) value = op(value, scratch[w]);
  return value;
}

// (score, index) pairs: the larger score wins, ties go to the smaller index, index -1 loses.
template <typename T>
struct ScoredIndex {
  T score;
  int64_t index;
};

template <typename T>
__device__ ScoredIndex<T> better(ScoredIndex<T> a, ScoredIndex<T> b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  if (b.score > a.score || (b.score == a.score && b.index < a.index)) return b;
  return a;
}

template <typename T>
__device__ ScoredIndex<T> warp_argmax(ScoredIndex<T> v) {
  for (int step = kWarpSize / 2; step > 0; step /= 2) {
    ScoredIndex<T> other{__shfl_xor_sync(kFullWarp, v.score, step), __shfl_xor_sync(kFullWarp, v.index, step)};
    v = better(v, other);
  }
  return v;
}

template <typename T>
__device__ ScoredIndex<T> block_argmax(ScoredIndex<T> v, ScoredIndex<T>* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_argmax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < num_warps; ++w) v = better(v, scratch[w]);
  return v;
}

// Record that `row` failed with `code`; the host reports the smallest row * 4 + code.
__device__ inline void record_row_error(unsigned long long* first_bad, int64_t row, int64_t code) {
  atomicMin(first_bad, static_cast<unsigned long long>(row * 4 + code));
}

}  // namespace mdm_ext
