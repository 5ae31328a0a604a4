// exp and log built only from IEEE-754 additions, multiplications and divisions, each rounded
// on its own (no fused multiply-add on the device, -ffp-contract=off on the host).
//
// Why not std::exp / std::log: glibc and CUDA's libdevice may differ in the last bit, and
// bit-identical samples on CPU and CUDA need bit-identical arithmetic. These are accurate to a
// few units in the last place over the ranges the kernels use (checked in the tests).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "philox.h"

namespace mdm_ext {

MDM_HD double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
MDM_HD double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
MDM_HD double div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
MDM_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
MDM_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
MDM_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

MDM_HD double bits_to_double(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}
MDM_HD uint64_t double_to_bits(double value) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(value));
#else
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}
MDM_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(static_cast<int>(bits));
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}
MDM_HD uint32_t float_to_bits(float value) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_int(value));
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

// e^x in float32. Inputs below -87 return 0 (the kernels add such terms to sums >= 1, where
// they are below float32 resolution anyway); inputs above 88 saturate.
MDM_HD float exp_f32(float x) {
  const bool underflow = x < -87.0f;
  x = underflow ? -87.0f : (x > 88.0f ? 88.0f : x);
  // x = k ln2 + r, |r| <= ln2 / 2; ln2 split so k * kLn2Hi is exact.
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float k = add(add(mul(x, 1.44269504088896341f), kRoundMagic), -kRoundMagic);
  const float r = add(add(x, mul(k, -0.693359375f)), mul(k, 2.12194440e-4f));
  // Taylor series to r^7: truncation below 1e-8 relative for |r| <= 0.347.
  float p = 1.0f / 5040.0f;
  p = add(mul(p, r), 1.0f / 720.0f);
  p = add(mul(p, r), 1.0f / 120.0f);
  p = add(mul(p, r), 1.0f / 24.0f);
  p = add(mul(p, r), 1.0f / 6.0f);
  p = add(mul(p, r), 0.5f);
  p = add(mul(p, r), 1.0f);
  p = add(mul(p, r), 1.0f);
  const float scale = bits_to_float(uint32_t(int32_t(k) + 127) << 23);
  return underflow ? 0.0f : mul(p, scale);
}

// e^x in float64. Inputs below -708 return 0; inputs above 709 saturate.
MDM_HD double exp_f64(double x) {
  const bool underflow = x < -708.0;
  x = underflow ? -708.0 : (x > 709.0 ? 709.0 : x);
  constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52
  const double k = add(add(mul(x, 1.4426950408889634), kRoundMagic), -kRoundMagic);
  // ln2 = kLn2Hi + kLn2Lo with kLn2Hi's low 21 bits zero, so k * kLn2Hi is exact.
  const double r = add(add(x, mul(k, -6.93147180369123816490e-01)),
                       mul(k, -1.90821492927058770002e-10));
  // Taylor series to r^13: truncation below 1e-17 relative for |r| <= 0.347.
  constexpr double kInvFactorial[14] = {
      1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
      1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800};
  double p = kInvFactorial[13];
MDM_UNROLL
  for (int i = 12; i >= 0; --i) p = add(mul(p, r), kInvFactorial[i]);
  const double scale = bits_to_double(uint64_t(int64_t(k) + 1023) << 52);
  return underflow ? 0.0 : mul(p, scale);
}

// Natural log in float64 of x >= 0 (log 0 = -inf, log inf = inf). Branch-free (selects only),
// so loops over it vectorise on the host.
MDM_HD double log_f64(double x) {
  const bool subnormal = x < 0x1.0p-1022;  // scaled into the normal range first
  const uint64_t bits = double_to_bits(subnormal ? mul(x, 0x1.0p54) : x);
  int32_t exponent = int32_t((bits >> 52) & 0x7ff) - (subnormal ? 1023 + 54 : 1023);
  double m = bits_to_double((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);  // [1, 2)
  const bool upper = m > 1.4142135623730951;
  m = upper ? mul(m, 0.5) : m;
  exponent += upper ? 1 : 0;
  // log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172: m - 1 is exact, so log stays
  // accurate relative to its value near m = 1 (the large-Gumbel end of the noise).
  const double f = add(m, -1.0);
  const double s = div(f, add(f, 2.0));
  const double z = mul(s, s);
  double p = 1.0 / 23;
MDM_UNROLL
  for (int k = 21; k >= 3; k -= 2) p = add(mul(p, z), 1.0 / k);
  const double log_m = add(mul(2.0, s), mul(mul(2.0, s), mul(z, p)));
  const double e = double(exponent);
  const double log_x = add(mul(e, 6.93147180369123816490e-01), add(mul(e, 1.90821492927058770002e-10), log_m));
  constexpr double kInfinity = std::numeric_limits<double>::infinity();
  return !(x > 0.0) ? -kInfinity : (x == kInfinity ? x : log_x);
}

// Natural log in float32 of x > 0 (normal range; log 0 = -inf), for the legacy float32 path.
// Branch-free, like log_f64.
MDM_HD float log_f32(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t exponent = int32_t((bits >> 23) & 0xff) - 127;
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f800000u);
  const bool upper = m > 1.41421356f;
  m = upper ? mul(m, 0.5f) : m;
  exponent += upper ? 1 : 0;
  const float f = add(m, -1.0f);
  const float s = div(f, add(f, 2.0f));
  const float z = mul(s, s);
  float p = 1.0f / 11;
  p = add(mul(p, z), 1.0f / 9);
  p = add(mul(p, z), 1.0f / 7);
  p = add(mul(p, z), 1.0f / 5);
  p = add(mul(p, z), 1.0f / 3);
  const float log_m = add(mul(2.0f, s), mul(mul(2.0f, s), mul(z, p)));
  const float e = float(exponent);
  const float log_x = add(mul(e, 0.693359375f), add(mul(e, -2.12194440e-4f), log_m));
  return x > 0.0f ? log_x : -std::numeric_limits<float>::infinity();
}

// Standard Gumbel noise -log(-log u) from a 53-bit uniform u in [0, 1): the largest value,
// at u = 1 - 2^-53, is 36.74 (24-bit uniforms stop at 16.64, the bias this package avoids).
MDM_HD double gumbel_f64(double u) { return -log_f64(-log_f64(u)); }

}  // namespace mdm_ext
