// Scan kernels for AVX2 + FMA + F16C: fp32 (also bf16, rounded at packing time) with a
// 6 x 16 FMA tile, int8 through 16-bit vpmaddwd with a 4 x 16 tile.
#include <immintrin.h>

#include "topk_scan.h"

namespace memlens::cpu {
namespace {

// Threshold test of one query's 16 scores s (times `scale`); see topk_select_avx512.h for
// the NaN convention and why the tile goes through memory.
inline void select16(float* s, float scale, Reservoir& r, uint32_t valid, int64_t r0, ScanTask& t) {
  const __m256 th = _mm256_set1_ps(r.threshold), sc = _mm256_set1_ps(scale);
  const __m256 s0 = _mm256_mul_ps(_mm256_load_ps(s), sc), s1 = _mm256_mul_ps(_mm256_load_ps(s + 8), sc);
  uint32_t m = (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s0, th, _CMP_NLE_UQ))) |
                (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s1, th, _CMP_NLE_UQ))) << 8)) & valid;
  if (!m) return;
  _mm256_store_ps(s, s0);
  _mm256_store_ps(s + 8, s1);
  for (; m; m &= m - 1) {
    const int j = __builtin_ctz(m);
    if (!(s[j] <= r.threshold)) reservoir_push(r, s[j], r0 + j, t.k, t.cap, t.scratch);
  }
}

inline uint32_t lanes(int n) { return n >= 16 ? 0xffffu : (1u << n) - 1; }

// fp32: 12 ymm accumulators (two FMA pipes x 4-6 cycles latency need >= 8-12 in flight),
// two reference vectors and one broadcast per step.
struct F32 : F32Layout<6, 16> {
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const float* a = static_cast<const float*>(ap);
    const float* b = static_cast<const float*>(bp);
    __m256 c[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (int64_t p = 0, d = t.refs->cols; p < d; ++p, a += MR, b += NR) {
      const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m256 ai = _mm256_broadcast_ss(a + i);
        c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
        c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
      }
    }
    alignas(32) float s[MR][NR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) _mm256_store_ps(s[i], c[i][0]), _mm256_store_ps(s[i] + 8, c[i][1]);
    const uint32_t valid = lanes(n);
    for (int i = 0; i < m; ++i) select16(s[i], 1.0f, t.res[q0 + i], valid, r0, t);
  }
};

// int8: int16 code pairs, vpmaddwd (exact, no saturation) + vpaddd into int32; dequantized as
// (sum * s_ref) * s_query. A group holds [d/2][16][2] int16 codes, then 16 scales.
struct I8 : I16PairLayout<4, 16> {
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const int64_t d = t.refs->cols;
    const int32_t* a = static_cast<const int32_t*>(ap);
    const __m256i* b = static_cast<const __m256i*>(bp);
    __m256i c[MR][2];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_si256();
    for (int64_t p = 0; p < (d + 1) / 2; ++p, a += MR, b += 2) {
      const __m256i b0 = _mm256_load_si256(b), b1 = _mm256_load_si256(b + 1);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m256i ai = _mm256_set1_epi32(a[i]);
        c[i][0] = _mm256_add_epi32(c[i][0], _mm256_madd_epi16(ai, b0));
        c[i][1] = _mm256_add_epi32(c[i][1], _mm256_madd_epi16(ai, b1));
      }
    }
    const float* sr = reinterpret_cast<const float*>(static_cast<const char*>(bp) + scale_offset(d));
    const __m256 sr0 = _mm256_loadu_ps(sr), sr1 = _mm256_loadu_ps(sr + 8);
    alignas(32) float s[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      _mm256_store_ps(s[i], _mm256_mul_ps(_mm256_cvtepi32_ps(c[i][0]), sr0));
      _mm256_store_ps(s[i] + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c[i][1]), sr1));
    }
    const uint32_t valid = lanes(n);
    for (int i = 0; i < m; ++i) select16(s[i], t.qscale[q0 + i], t.res[q0 + i], valid, r0, t);
  }
};

}  // namespace

void scan_avx2(ScanTask& t) {
  if (t.precision == Precision::int8)
    scan<I8>(t);
  else
    scan<F32>(t);
}

void rerank_avx2(const RerankTask& t) { rerank_rows(t); }

}  // namespace memlens::cpu
