// The CPU's bulk normal generator for the inversion step: fill_normals writes the very numbers
// inv::normal_at defines (memlens/inversion_math.h), many at a time.
//
// Philox needs 32 x 32 -> 64-bit products, which GCC does not vectorize (it has no vector
// "multiply high" for 32-bit lanes), so the counter blocks are run through Philox with
// intrinsics in the ISA of the including translation unit (AVX-512: 16 blocks per vector,
// AVX2: 8), and the Box-Muller transform then vectorizes as a plain `omp simd` loop over the
// words. Integer arithmetic is exact, so every path returns the same bits as normal_at.
#pragma once
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "memlens/inversion_math.h"

namespace memlens::cpu {
namespace {

#if defined(__AVX512F__)
struct PhiloxLanes {
  static constexpr int kWidth = 16;
  using V = __m512i;
  static V set1(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  static V iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static V add(V a, V b) { return _mm512_add_epi32(a, b); }
  static V xor3(V a, V b, V c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }
  static void store(uint32_t* p, V v) { _mm512_storeu_si512(p, v); }
  // hi and lo words of the lane-wise 64-bit products a * m (m: the same 32-bit word in every lane)
  static void mulhilo(V a, V m, V& hi, V& lo) {
    const V even = _mm512_mul_epu32(a, m);
    const V odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  }
};
#elif defined(__AVX2__)
struct PhiloxLanes {
  static constexpr int kWidth = 8;
  using V = __m256i;
  static V set1(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
  static V iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static V add(V a, V b) { return _mm256_add_epi32(a, b); }
  static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static void store(uint32_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static void mulhilo(V a, V m, V& hi, V& lo) {
    const V even = _mm256_mul_epu32(a, m);
    const V odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }
};
#endif

// The four Philox4x32-10 words of blocks g0 + q (q in [0, n)) of (row, step) into w0..w3.
inline void philox_words(uint32_t* w0, uint32_t* w1, uint32_t* w2, uint32_t* w3, uint32_t g0,
                         int64_t n, uint32_t row, uint32_t step, uint32_t k0, uint32_t k1) {
  int64_t q = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
  using L = PhiloxLanes;
  using V = L::V;
  const V m0 = L::set1(0xD2511F53u), m1 = L::set1(0xCD9E8D57u);
  V key0[10], key1[10];
  for (int r = 0; r < 10; ++r) {
    key0[r] = L::set1(k0 + static_cast<uint32_t>(r) * 0x9E3779B9u);
    key1[r] = L::set1(k1 + static_cast<uint32_t>(r) * 0xBB67AE85u);
  }
  struct Block {  // the counter words of L::kWidth consecutive blocks, one per lane
    V c0, c1, c2, c3;
  };
  const auto start = [&](int64_t at) {
    return Block{L::add(L::set1(g0 + static_cast<uint32_t>(at)), L::iota()), L::set1(row),
                 L::set1(step), L::set1(inv::kPhiloxTag)};
  };
  const auto round = [&](Block& x, int r) {
    V hi0, lo0, hi1, lo1;
    L::mulhilo(x.c0, m0, hi0, lo0);
    L::mulhilo(x.c2, m1, hi1, lo1);
    x = Block{L::xor3(hi1, x.c1, key0[r]), lo1, L::xor3(hi0, x.c3, key1[r]), lo0};
  };
  const auto store = [&](const Block& x, int64_t at) {
    L::store(w0 + at, x.c0);
    L::store(w1 + at, x.c1);
    L::store(w2 + at, x.c2);
    L::store(w3 + at, x.c3);
  };
  // two independent vectors per iteration: one round is a chain of dependent multiplies,
  // blends and xors, and a second chain fills the pipeline while the first waits
  for (; q + 2 * L::kWidth <= n; q += 2 * L::kWidth) {
    Block a = start(q), b = start(q + L::kWidth);
    for (int r = 0; r < 10; ++r) {
      round(a, r);
      round(b, r);
    }
    store(a, q);
    store(b, q + L::kWidth);
  }
  for (; q + L::kWidth <= n; q += L::kWidth) {
    Block a = start(q);
    for (int r = 0; r < 10; ++r) round(a, r);
    store(a, q);
  }
#endif
  for (; q < n; ++q)
    inv::philox4(g0 + static_cast<uint32_t>(q), row, step, inv::kPhiloxTag, k0, k1, w0[q], w1[q],
                 w2[q], w3[q]);
}

// out[0, len) = the normals of row `row`, columns [col0, col0 + len), col0 a multiple of 4:
// normal (c & 3) of Philox block c >> 2, as inv::normal_at.
inline void fill_normals(float* out, uint32_t row, uint64_t col0, int64_t len, uint32_t step,
                         uint32_t k0, uint32_t k1) {
  constexpr int64_t kBatch = 128;  // blocks per round trip through the word buffers (2 KiB)
  alignas(64) uint32_t w0[kBatch], w1[kBatch], w2[kBatch], w3[kBatch];
  const int64_t blocks = len / 4;
  const uint32_t g0 = static_cast<uint32_t>(col0 >> 2);
  for (int64_t q0 = 0; q0 < blocks; q0 += kBatch) {
    const int64_t nb = blocks - q0 < kBatch ? blocks - q0 : kBatch;
    philox_words(w0, w1, w2, w3, g0 + static_cast<uint32_t>(q0), nb, row, step, k0, k1);
    float* o = out + 4 * q0;
#pragma omp simd
    for (int64_t q = 0; q < nb; ++q) {
      const float r1 = inv::bm_radius(w0[q]), u1 = inv::bm_angle(w1[q]);
      const float r2 = inv::bm_radius(w2[q]), u2 = inv::bm_angle(w3[q]);
      o[4 * q] = r1 * inv::cos_2pi(u1);
      o[4 * q + 1] = r1 * inv::cos_2pi(u1 - 0.25f);
      o[4 * q + 2] = r2 * inv::cos_2pi(u2);
      o[4 * q + 3] = r2 * inv::cos_2pi(u2 - 0.25f);
    }
  }
  for (int64_t j = blocks * 4; j < len; ++j)
    out[j] = inv::normal_at(row, col0 + static_cast<uint64_t>(j), step, k0, k1);
}

}  // namespace
}  // namespace memlens::cpu
