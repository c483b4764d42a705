// Element-wise math of the fused inversion step, shared by the CPU core and the CUDA kernels so
// that both draw the same noise and round the same way. The specification (and the float64
// reference every backend is tested against) is python/memlens/reference/inversion.py.
//
// Every function is `static inline`: each translation unit (the per-ISA CPU units are compiled
// with different -m flags) keeps its own copy, so the linker can never hand an AVX-512 body to
// the baseline build. No libm calls: the polynomials below vectorize under `omp simd` and give
// the same bits on every CPU level (to the compiler's FMA contraction).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MEMLENS_HD __host__ __device__
#else
#define MEMLENS_HD
#endif

namespace memlens::inv {

constexpr uint32_t kPhiloxTag = 0x6D6C6E73u;  // "mlns": the fourth counter word

MEMLENS_HD static inline uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

MEMLENS_HD static inline float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Philox4x32-10 (Salmon et al., SC'11): the four output words of one counter block.
MEMLENS_HD static inline void philox4(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                      uint32_t k0, uint32_t k1, uint32_t& o0, uint32_t& o1,
                                      uint32_t& o2, uint32_t& o3) {
#if defined(__CUDACC__)
#pragma unroll
#elif defined(__GNUC__)
#pragma GCC unroll 10  // a loop inside an `omp simd` body blocks vectorization
#endif
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  o0 = c0;
  o1 = c1;
  o2 = c2;
  o3 = c3;
}

// ln(u) for normal positive floats: u = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(t),
// t = (m-1)/(m+1), |t| <= 0.1716, odd series to t^9 (truncation < 1e-9).
MEMLENS_HD static inline float log_pos(float u) {
  const uint32_t bits = f2u(u);
  int e = static_cast<int>(bits >> 23) - 127;
  float m = u2f((bits & 0x007FFFFFu) | 0x3F800000u);
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  const float p = 2.0f + t2 * (0.66666667f + t2 * (0.4f + t2 * (0.28571429f + t2 * 0.22222222f)));
  // e ln 2 with ln 2 split in two (the high part has 8 free low bits: e * hi is exact)
  return static_cast<float>(e) * 0.693145751953125f + (static_cast<float>(e) * 1.428606765330187e-06f + t * p);
}

// cos(2 pi u) for u in [0, 1): fold to x = 2 pi b, b in [0, 1/4], Taylor to x^12 (< 7e-9).
MEMLENS_HD static inline float cos_2pi(float u) {
  const float y = u >= 0.5f ? u - 1.0f : u;  // exact
  float a = y < 0.0f ? -y : y;                // [0, 1/2]
  const bool flip = a > 0.25f;
  a = flip ? 0.5f - a : a;  // exact
  const float x = 6.2831853071795865f * a;
  const float z = x * x;
  const float c =
      1.0f + z * (-0.5f + z * (4.1666667e-2f + z * (-1.3888889e-3f + z * (2.4801587e-5f +
             z * (-2.7557319e-7f + z * 2.0876757e-9f)))));
  return flip ? -c : c;
}

MEMLENS_HD static inline float sqrt_f(float x) {
#if defined(__CUDA_ARCH__)
  return sqrtf(x);
#else
  return __builtin_sqrtf(x);
#endif
}

// Box-Muller radius and angle of one word pair: u1 in (0, 1) (exact), u2 in [0, 1).
MEMLENS_HD static inline float bm_radius(uint32_t p) {
  const float u1 = static_cast<float>(2u * (p >> 9) + 1u) * 5.9604644775390625e-08f;  // 2^-24
  return sqrt_f(-2.0f * log_pos(u1));
}
MEMLENS_HD static inline float bm_angle(uint32_t q) {
  return static_cast<float>(q >> 8) * 5.9604644775390625e-08f;
}

// The memlens standard normal of sample row `row`, element `col`, noise step `step`: normal
// (col & 3) of the Philox block (col >> 2, row, step, tag) -- two Box-Muller pairs, cos then
// sin (sin(2 pi u) = cos(2 pi (u - 1/4)), exact shift). See reference/inversion.py.
MEMLENS_HD static inline float normal_at(uint32_t row, uint64_t col, uint32_t step, uint32_t k0,
                                         uint32_t k1) {
  uint32_t x0, x1, x2, x3;
  philox4(static_cast<uint32_t>(col >> 2), row, step, kPhiloxTag, k0, k1, x0, x1, x2, x3);
  const bool second = (col & 2u) != 0;
  const float r = bm_radius(second ? x2 : x0);
  const float u = bm_angle(second ? x3 : x1);
  return r * cos_2pi((col & 1u) ? u - 0.25f : u);
}


// exp(x) for |x| < ~80: 2^(x log2 e) = 2^k 2^f, f in [-1/2, 1/2], degree-6 polynomial
// (relative error ~2e-8 before rounding); saturates to 0 / +inf outside float's range.
MEMLENS_HD static inline float exp_f(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float t = x * 1.44269504088896341f;
  // round half away from zero, branch-free (vectorizes): truncate t +- 1/2
  const float half = t < 0.0f ? -0.5f : 0.5f;
  const float kf = static_cast<float>(static_cast<int>(t + half));
  // f = x - k ln2 with ln2 split (exact products for |k| <= 128)
  const float f = (x - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;
  const float p = 1.0f + f * (1.0f + f * (0.5f + f * (0.16666667f + f * (4.1666668e-2f +
                  f * (8.3333338e-3f + f * 1.3888889e-3f)))));
  const int k = static_cast<int>(kf);
  return p * u2f(static_cast<uint32_t>(k + 127) << 23);
}

// ---- storage types of the model-facing tensors (x_t, eps_hat, the model's gradient)

MEMLENS_HD static inline float bf16_to_f32(uint16_t h) { return u2f(static_cast<uint32_t>(h) << 16); }

MEMLENS_HD static inline uint16_t f32_to_bf16(float f) {  // round to nearest even
  uint32_t u = f2u(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

MEMLENS_HD static inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t ex = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (ex == 0x1Fu) return u2f(sign | 0x7F800000u | (man << 13));
  if (ex == 0) {  // zero or subnormal: man * 2^-24, exact in float
    const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return u2f(f2u(v) | sign);
  }
  return u2f(sign | ((ex + 112u) << 23) | (man << 13));
}

MEMLENS_HD static inline uint16_t f32_to_f16(float f) {  // round to nearest even
  uint32_t u = f2u(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t o;
  if (u >= (143u << 23)) {  // >= 65536 (rounds to inf), inf or NaN
    o = u > 0x7F800000u ? 0x7E00u : 0x7C00u;
  } else if (u < (113u << 23)) {  // half subnormal or zero: let float addition round
    const float t = u2f(u) + u2f(126u << 23);  // + 0.5: aligns the half's ulp to float's
    o = f2u(t) - (126u << 23);
  } else {
    const uint32_t odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + odd;
    o = u >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

// Loader/storer of one storage type (float, or uint16_t carrying f16 / bf16 bits); in an
// unnamed namespace for the same reason as `static` above.
namespace {
struct F32 {
  using T = float;
  MEMLENS_HD static float load(T v) { return v; }
  MEMLENS_HD static T store(float v) { return v; }
};
struct F16 {
  using T = uint16_t;
  MEMLENS_HD static float load(T v) { return f16_to_f32(v); }
  MEMLENS_HD static T store(float v) { return f32_to_f16(v); }
};
struct BF16 {
  using T = uint16_t;
  MEMLENS_HD static float load(T v) { return bf16_to_f32(v); }
  MEMLENS_HD static T store(float v) { return f32_to_bf16(v); }
};
}  // namespace

}  // namespace memlens::inv
