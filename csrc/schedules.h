// Masking schedules alpha_t and their inverses for the first-hit-time kernels; the same
// formulas as mdm_ext/schedules.py (the tests hold the two together).
#pragma once

#include <cmath>

#include "det_math.h"

namespace mdm_ext {

enum Schedule : int64_t { kLinear = 0, kLogLinear = 1, kCosine = 2 };
constexpr double kLogLinearEps = 1e-3;
constexpr double kHalfPi = 1.57079632679489661923;

// The linear and log-linear schedules use only IEEE operations, so CPU and CUDA agree bit for
// bit; cosine calls the platform's cos/acos, which may differ in the last place.
MDM_HD double schedule_alpha(int64_t schedule, double t) {
  if (schedule == kLinear) return add(1.0, -t);
  if (schedule == kLogLinear) return add(1.0, -mul(1.0 - kLogLinearEps, t));
  return cos(mul(t, kHalfPi));
}

MDM_HD double schedule_alpha_inv(int64_t schedule, double a) {
  if (schedule == kLinear) return add(1.0, -a);
  if (schedule == kLogLinear) return div(add(1.0, -a), 1.0 - kLogLinearEps);
  return mul(acos(a > 1.0 ? 1.0 : (a < -1.0 ? -1.0 : a)), 1.0 / kHalfPi);
}

// Next unmask time of a sequence with n_masked masked tokens at time t (the first time, going
// from t towards 0, at which one of them is unmasked): alpha^-1(1 - u^{1/n} (1 - alpha_t)).
MDM_HD double first_hit_time(int64_t schedule, double t, int64_t n_masked, double u) {
  const double u_root = exp_f64(div(log_f64(u), double(n_masked)));
  return schedule_alpha_inv(schedule,
                            add(1.0, -mul(u_root, add(1.0, -schedule_alpha(schedule, t)))));
}

}  // namespace mdm_ext
