// Argument checks and error messages shared by the CPU and CUDA entry points. The Python
// wrappers in mdm_ext/ops.py check first with friendlier messages; these keep direct
// torch.ops.mdm_ext calls from reaching a kernel with arguments it cannot handle.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "categorical.h"
#include "philox.h"

namespace mdm_ext {

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", dtype);
}

inline void check_randomness(int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(seed >= 0, "seed must be non-negative, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0 && uint64_t(offset) < kMaxOffset,
                    "offset must be in [0, 2^56), got ", offset);
}

// [..., V] scores as a [rows, V] matrix whose rows are contiguous (row stride may be anything,
// including 0 for broadcast rows), so no copy is made for the common layouts.
inline at::Tensor as_rows(const at::Tensor& scores, const char* name) {
  TORCH_CHECK_VALUE(scores.dim() >= 1, name, " must have at least one dimension [..., V]");
  const int64_t vocab = scores.size(-1);
  TORCH_CHECK_VALUE(vocab > 0, name, " has an empty last dimension (V = 0)");
  TORCH_CHECK_VALUE(vocab < (int64_t(1) << 31), name, " has V = ", vocab, " >= 2^31");
  at::Tensor rows = scores.reshape({-1, vocab});
  if (rows.stride(1) != 1) rows = rows.contiguous();
  TORCH_CHECK_VALUE(rows.size(0) < (int64_t(1) << 32), name, " has more than 2^32 rows");
  return rows;
}

inline void check_sample_args(const at::Tensor& scores, int64_t kind, double temperature,
                              int64_t exclude, int64_t seed, int64_t offset) {
  const char* name = kind == kProbs ? "probs" : "logits";
  check_floating(scores, name);
  TORCH_CHECK_VALUE(kind == kLogits || kind == kProbs, "unknown score kind ", kind);
  TORCH_CHECK_VALUE(temperature >= 0.0 && temperature < kInf,
                    "temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK_VALUE(kind == kLogits || temperature == 1.0,
                    "temperature applies to logits only");
  TORCH_CHECK_VALUE(exclude >= -1 && exclude < scores.size(-1), "exclude must be in [0, V = ",
                    scores.size(-1), ") or None, got ", exclude);
  check_randomness(seed, offset);
}

// Raise for the first row a kernel could not sample (`first_bad` = row * 4 + RowError).
inline void raise_row_error(int64_t kind, int64_t first_bad) {
  const int64_t row = first_bad / 4, code = first_bad % 4;
  const char* name = kind == kProbs ? "probs" : "logits";
  if (code == kRowNonFinite) {
    TORCH_CHECK_VALUE(false, name, " row ", row,
                      kind == kProbs ? " has a negative, NaN or infinite probability"
                                     : " has a NaN or +inf logit");
  }
  TORCH_CHECK_VALUE(false, name, " row ", row,
                    kind == kProbs ? " has no positive probability (after exclusion)"
                                   : " has no finite logit (every one is -inf or excluded)");
}

}  // namespace mdm_ext
