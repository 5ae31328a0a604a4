// Counter-based random numbers shared by the CPU and CUDA kernels.
//
// Every random number is a pure function of (seed, offset, stream, row, index): no state, no
// dependence on thread or block layout, so the same call gives bit-identical samples on CPU and
// CUDA. Philox4x32-10 (Salmon et al., SC'11) maps a 128-bit counter and a 64-bit key to 128
// random bits.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MDM_HD __host__ __device__ __forceinline__
#define MDM_UNROLL _Pragma("unroll")
#else
// Forced inline so host loops over these functions vectorise.
#define MDM_HD inline __attribute__((always_inline))
#define MDM_UNROLL _Pragma("GCC unroll 16")
#endif

namespace mdm_ext {

struct Bits128 {
  uint32_t w[4];
};

// Independent random streams of one (seed, offset). The block-noise streams are numbered by
// rejection round: kBlockNoise + round, round < kMaxRounds (see categorical.h).
enum Stream : uint32_t {
  kTokenNoise = 0,     // Gumbel noise of one token inside the chosen block
  kAcceptNoise = 1,    // acceptance test of a proposed block, index = round
  kLegacyNoise = 2,    // 24-bit uniforms of the legacy float32 path
  kFirstHitNoise = 3,  // first-hit time of one sequence
  kPositionKeys = 4,   // random keys ranking masked positions
  kBlockNoise = 8,
};

// Offsets share their top byte with the stream id, so they must stay below 2^56.
constexpr uint64_t kMaxOffset = uint64_t(1) << 56;

MDM_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t product = uint64_t(a) * uint64_t(b);
  hi = uint32_t(product >> 32);
  lo = uint32_t(product);
#endif
}

MDM_HD Bits128 philox4x32_10(Bits128 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
MDM_UNROLL
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, ctr.w[0], hi0, lo0);
    mulhilo32(kMul1, ctr.w[2], hi1, lo1);
    ctr = Bits128{{hi1 ^ ctr.w[1] ^ key0, lo1, hi0 ^ ctr.w[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return ctr;
}

// 128 random bits for element `index` of `row` in `stream`.
MDM_HD Bits128 random_bits(uint64_t seed, uint64_t offset, uint32_t stream, uint64_t row,
                           uint64_t index) {
  const Bits128 ctr{{uint32_t(index), uint32_t(row), uint32_t(offset),
                     uint32_t(offset >> 32) | (stream << 24)}};
  return philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32));
}

// Uniform on [0, 1) with 53 random bits (every double k * 2^-53), as torch's float64 rand:
// k = high * 2^21 + (low >> 11), assembled from exact int32 -> double conversions, which vector
// units have (int64 ones mostly do not).
MDM_HD double uniform53(uint32_t high, uint32_t low) {
  const double high_value = double(int32_t(high ^ 0x80000000u)) + 2147483648.0;  // exact
  const double low_value = double(int32_t(low >> 11));
  return (high_value * 0x1.0p21 + low_value) * 0x1.0p-53;  // exact: an integer below 2^53, scaled
}
MDM_HD double uniform53(Bits128 r) { return uniform53(r.w[0], r.w[1]); }

// Uniform on [0, 1) with 24 random bits, as torch's float32 rand: the legacy path's precision.
MDM_HD float uniform24(uint32_t word) { return float(int32_t(word >> 8)) * 0x1.0p-24f; }

// Per-token streams share counters between neighbouring tokens, a quarter or a half of the
// Philox work per token: token i takes word i % 4 of counter i / 4 for a 24-bit uniform, and
// words 2 (i % 2) and 2 (i % 2) + 1 of counter i / 2 for a 53-bit one.
MDM_HD float token_uniform24(uint64_t seed, uint64_t offset, uint32_t stream, uint64_t row, uint64_t index) {
  const Bits128 r = random_bits(seed, offset, stream, row, index >> 2);
  const uint32_t low_pair = index & 1 ? r.w[1] : r.w[0], high_pair = index & 1 ? r.w[3] : r.w[2];
  return uniform24(index & 2 ? high_pair : low_pair);
}
MDM_HD double token_uniform53(uint64_t seed, uint64_t offset, uint32_t stream, uint64_t row, uint64_t index) {
  const Bits128 r = random_bits(seed, offset, stream, row, index >> 1);
  return index & 1 ? uniform53(r.w[2], r.w[3]) : uniform53(r.w[0], r.w[1]);
}

}  // namespace mdm_ext
