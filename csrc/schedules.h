// Masking schedules alpha_t and their inverses for the first-hit-time kernels; the same
// formulas and names as mdm_ext/schedules.py (the tests hold the two together).
#pragma once

#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <string_view>
#include <utility>

#include "det_math.h"

namespace mdm_ext {

enum class ScheduleKind : int { kAlphaLinear, kLogLinear, kSigmaLinear, kGeometric, kCosine, kCosineSqr };

// A schedule and its two parameters: (eps, unused) or (sigma_min, sigma_max).
struct Schedule {
  ScheduleKind kind;
  double a;
  double b;
};

inline Schedule parse_schedule(std::string_view name, double a, double b) {
  constexpr std::pair<std::string_view, ScheduleKind> kNames[] = {
      {"alpha_linear", ScheduleKind::kAlphaLinear}, {"loglinear", ScheduleKind::kLogLinear},
      {"sigma_linear", ScheduleKind::kSigmaLinear}, {"geometric", ScheduleKind::kGeometric},
      {"cosine", ScheduleKind::kCosine},           {"cosinesqr", ScheduleKind::kCosineSqr}};
  for (const auto& [known, kind] : kNames)
    if (name == known) return {kind, a, b};
  TORCH_CHECK_VALUE(false, "unknown schedule '", std::string(name), "'");
}

constexpr double kHalfPi = 1.57079632679489661923;

// alpha_linear, loglinear, sigma_linear and geometric use only IEEE operations (det_math.h), so
// CPU and CUDA agree bit for bit; the cosines call the platform's cos/acos, which may differ in
// the last place.
MDM_HD double schedule_alpha(const Schedule& s, double t) {
  switch (s.kind) {
    case ScheduleKind::kAlphaLinear: return add(1.0, -t);
    case ScheduleKind::kLogLinear: return add(1.0, -mul(1.0 - s.a, t));
    case ScheduleKind::kSigmaLinear: return exp_f64(-add(s.a, mul(t, s.b - s.a)));
    case ScheduleKind::kGeometric:
      return exp_f64(-exp_f64(add(mul(1.0 - t, log_f64(s.a)), mul(t, log_f64(s.b)))));
    case ScheduleKind::kCosine: return add(s.a, mul(1.0 - s.a, cos(mul(t, kHalfPi))));
    default: {
      const double c = cos(mul(t, kHalfPi));
      return add(s.a, mul(1.0 - s.a, mul(c, c)));
    }
  }
}

MDM_HD double clamp_unit(double t) { return t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t); }

// The time in [0, 1] with alpha_t = a (clamped where a lies outside [alpha_1, alpha_0]).
MDM_HD double schedule_alpha_inv(const Schedule& s, double a) {
  switch (s.kind) {
    case ScheduleKind::kAlphaLinear: return clamp_unit(add(1.0, -a));
    case ScheduleKind::kLogLinear: return clamp_unit(div(add(1.0, -a), 1.0 - s.a));
    case ScheduleKind::kSigmaLinear: return clamp_unit(div(add(-log_f64(a), -s.a), s.b - s.a));
    case ScheduleKind::kGeometric: {
      const double log_min = log_f64(s.a);
      return clamp_unit(div(add(log_f64(-log_f64(a)), -log_min), add(log_f64(s.b), -log_min)));
    }
    default: {
      const double c = clamp_unit(div(add(a, -s.a), 1.0 - s.a));
      return mul(acos(s.kind == ScheduleKind::kCosine ? c : sqrt(c)), 1.0 / kHalfPi);
    }
  }
}

// Next unmask time of a sequence with n_masked masked tokens at time t (the first time, going
// from t towards 0, at which one of them is unmasked): alpha^-1(1 - u^{1/n} (1 - alpha_t)).
MDM_HD double first_hit_time(const Schedule& s, double t, int64_t n_masked, double u) {
  const double u_root = exp_f64(div(log_f64(u), double(n_masked)));
  return schedule_alpha_inv(s, add(1.0, -mul(u_root, add(1.0, -schedule_alpha(s, t)))));
}

}  // namespace mdm_ext
