// float exp and log written as branch-free arithmetic (bit tricks + polynomials), so
// that GCC vectorises the loops that call them (std::expf/logf are opaque library
// calls that keep a loop scalar). For the CPU kernels of encode_boxes/decode_boxes.
//
// Accuracy (a sweep of every 97th float bit pattern against float64): exp within 1.2 ulp,
// log within 0.9 ulp of the exact result; torch.exp/torch.log's SIMD float kernels are
// 1-ulp routines, so results agree with torchvision's within float rounding. Special values as
// std::exp/std::log: exp(-inf) = 0, exp(+inf) = inf, overflow -> inf, underflow ->
// subnormals then 0, log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, NaN -> NaN.
// Only IEEE +, -, *, / and selects, no FMA (-ffp-contract=off): every CPU and every
// target_clones version gives the same bits.
// double goes to std::exp/std::log (correctly rounded to within libm's accuracy).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pydetops {
namespace vecmath {

inline float f_from_bits(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t bits_of(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// ln 2 = kLn2Hi + kLn2Lo, kLn2Hi = 355/512 (9 significant bits, so n * kLn2Hi is exact
// for the |n| <= 152 used here).
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440054690583e-4f;

// exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2; exp(r) by its Taylor
// polynomial of degree 7 (truncation < 6e-9 relative); 2^n applied as two exact powers
// of two so that n in [-152, 129] (subnormal results, and overflow to inf) needs no branch.
inline float exp_f32(float x) {
  float xc = x < -105.0f ? -105.0f : x;  // exp(-105) < 2^-151: rounds to 0 as exp(-inf); NaN stays
  xc = xc > 89.0f ? 89.0f : xc;          // exp(89) > FLT_MAX: overflows to inf as exp(+inf)
  const float magic = 12582912.0f;       // 1.5 * 2^23: x + magic rounds x to an integer (ties to even)
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;  // the first difference is exact (Sterbenz)
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t ni = bits_of(t) - bits_of(magic);  // n as an integer (t's ulp is 1)
  const int32_t n1 = ni / 2;
  const int32_t n2 = ni - n1;
  // Unsigned arithmetic: a NaN x gives a meaningless ni, and p is NaN anyway.
  const float s1 = f_from_bits(static_cast<int32_t>((static_cast<uint32_t>(n1) + 127u) << 23));
  const float s2 = f_from_bits(static_cast<int32_t>((static_cast<uint32_t>(n2) + 127u) << 23));
  return (p * s1) * s2;  // p * s1 is exact (normal range); one rounding in the last product
}

// log(x) = e ln 2 + log(m), x = m 2^e with m in [sqrt(1/2), sqrt(2)); with f = m - 1 (exact)
// and s = f / (2 + f): log(m) = 2 atanh(s) = f - s (f - R), R = 2z/3 + 2z^2/5 + ... + 2z^5/11,
// z = s^2 (|s| <= 0.172: the terms left out are < 1e-10 relative).
inline float log_f32(float x) {
  const bool sub = x < 1.17549435e-38f;  // subnormal (zero and negatives are fixed below)
  const float xs = sub ? x * 8388608.0f : x;  // * 2^23: normal
  const int32_t bits = bits_of(xs);
  const int32_t e = (bits - 0x3f3504f3) >> 23;  // 0x3f3504f3: sqrt(1/2)
  const float m = f_from_bits(bits - e * 8388608);
  const float ef = static_cast<float>(e) - (sub ? 23.0f : 0.0f);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  float R = 2.0f / 11.0f;
  R = R * z + 2.0f / 9.0f;
  R = R * z + 2.0f / 7.0f;
  R = R * z + 2.0f / 5.0f;
  R = R * z + 2.0f / 3.0f;
  R = R * z;
  const float lm = f - s * (f - R);
  float res = ef * kLn2Hi + (lm + ef * kLn2Lo);
  res = x == 0.0f ? -INFINITY : res;
  res = x < 0.0f ? NAN : res;
  res = x == INFINITY ? x : res;
  res = x != x ? x : res;
  return res;
}

// The Math policy of coding::decode_box_math / encode_box on the CPU.
struct CpuMath {
  static float exp(float x) { return exp_f32(x); }
  static float log(float x) { return log_f32(x); }
  static double exp(double x) { return std::exp(x); }
  static double log(double x) { return std::log(x); }
};

}  // namespace vecmath
}  // namespace pydetops
