// Shared pieces of the first-hit-time and masked-position kernels (CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>

#include "op_checks.h"
#include "philox.h"
#include "schedules.h"

namespace mdm_ext {

// Checks the arguments and returns the parsed schedule.
inline Schedule check_first_hit_args(const at::Tensor& t, const at::Tensor& n_masked, std::string_view schedule,
                                     c10::ArrayRef<double> params, int64_t seed, int64_t offset) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
                   "t must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_TYPE(n_masked.scalar_type() == at::kLong, "n_masked must be int64, got ", n_masked.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && n_masked.sizes() == t.sizes(),
                    "t and n_masked must both have shape [B], got ", t.sizes(), " and ", n_masked.sizes());
  TORCH_CHECK_VALUE(params.size() == 2, "schedule_params must hold 2 numbers, got ", params.size());
  TORCH_CHECK_VALUE(t.size(0) < (int64_t(1) << 32), "t has more than 2^32 rows");
  check_randomness(seed, offset);
  return parse_schedule(schedule, params[0], params[1]);
}

inline void check_choose_args(const at::Tensor& x, int64_t mask_id, const at::Tensor& k,
                              int64_t seed, int64_t offset) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, "x must be int64, got ", x.scalar_type());
  TORCH_CHECK_TYPE(k.scalar_type() == at::kLong, "k must be int64, got ", k.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, "x must have shape [B, L], got ", x.sizes());
  TORCH_CHECK_VALUE(k.dim() == 1 && k.size(0) == x.size(0), "k must have shape [B] = [", x.size(0),
                    "], got ", k.sizes());
  TORCH_CHECK_VALUE(x.size(1) < (int64_t(1) << 31), "x has L >= 2^31");
  TORCH_CHECK_VALUE(x.size(0) < (int64_t(1) << 32), "x has more than 2^32 rows");
  check_randomness(seed, offset);
  (void)mask_id;  // any id: rows without it have nothing to choose
}

// Random key of position `pos` in `row`: the chosen positions are the k masked ones with the
// smallest (key, pos), a uniformly random k-subset (64-bit keys practically never tie).
MDM_HD uint64_t position_key(uint64_t seed, uint64_t offset, uint64_t row, uint64_t pos) {
  const Bits128 r = random_bits(seed, offset, kPositionKeys, row, pos);
  return (uint64_t(r.w[0]) << 32) | r.w[1];
}

}  // namespace mdm_ext
