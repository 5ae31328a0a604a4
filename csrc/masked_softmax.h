// Shared pieces of the masked softmax / cross-entropy kernels (CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "det_math.h"
#include "op_checks.h"

namespace mdm_ext {

// exp in the accumulation type: float32 for float32/16/bfloat16 logits, float64 for float64.
MDM_HD float acc_exp(float x) { return exp_f32(x); }
MDM_HD double acc_exp(double x) { return exp_f64(x); }

// A row's log-normaliser max + log sum_i e^{x_i - max}, kept in two parts: a log-probability
// is (x - max) - log_sum, as torch computes it; x - (max + log_sum) would add the rounding of
// max + log_sum, at the magnitude of max, to every token of the row.
template <typename acc_t>
struct LogNormaliser {
  acc_t max;
  acc_t log_sum;

  MDM_HD acc_t log_prob(acc_t x) const { return (x - max) - log_sum; }
};

inline void check_mask_id(int64_t mask_id, int64_t vocab) {
  TORCH_CHECK_VALUE(mask_id >= 0 && mask_id < vocab, "mask_id must be in [0, V = ", vocab,
                    "), got ", mask_id);
}

// Checked [N, ...] views of a cross-entropy call.
struct CrossEntropyRows {
  at::Tensor logits;  // [N, V], contiguous rows
  at::Tensor target;  // [N] int64
  at::Tensor weight;  // [N] in the accumulation dtype, or undefined
};

inline CrossEntropyRows cross_entropy_rows(const at::Tensor& logits, const at::Tensor& target,
                                    const std::optional<at::Tensor>& weight, int64_t mask_id) {
  check_floating(logits, "logits");
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "target must be int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(logits.dim() >= 1 && target.sizes() == logits.sizes().slice(0, logits.dim() - 1),
                    "target must have shape logits.shape[:-1] = ", logits.sizes().slice(0, logits.dim() - 1),
                    ", got ", target.sizes());
  CrossEntropyRows rows{as_rows(logits, "logits").contiguous(), target.reshape({-1}).contiguous(), {}};
  check_mask_id(mask_id, rows.logits.size(1));
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK_VALUE(weight->sizes() == target.sizes(), "weight must have the shape of target ",
                      target.sizes(), ", got ", weight->sizes());
    const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK_TYPE(weight->scalar_type() == acc, "weight must be ", acc, " for ", logits.scalar_type(),
                     " logits, got ", weight->scalar_type());
    rows.weight = weight->reshape({-1}).contiguous();
  }
  return rows;
}

inline void raise_bad_target(int64_t first_bad, int64_t mask_id, int64_t vocab) {
  TORCH_CHECK_VALUE(first_bad == INT64_MAX, "target at flat position ", first_bad,
                    " is out of [0, V = ", vocab, ") or equals mask_id = ", mask_id);
}

}  // namespace mdm_ext
