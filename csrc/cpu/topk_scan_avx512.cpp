// Scan kernels for AVX-512 F/BW/DQ/VL: fp32 (also bf16, rounded at packing time) with a
// 14 x 32 FMA tile, int8 through 16-bit vpmaddwd with a 12 x 32 tile.
#include <immintrin.h>

#include "topk_select_avx512.h"

namespace memlens::cpu {
namespace {

// fp32: 28 zmm accumulators; per step two reference vectors and 14 query broadcasts feed
// 28 FMAs, well within two loads per cycle.
struct F32 : F32Layout<14, 32> {
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const float* a = static_cast<const float*>(ap);
    const float* b = static_cast<const float*>(bp);
    __m512 c[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0, d = t.refs->cols; p < d; ++p, a += MR, b += NR) {
      const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) {
        const __m512 ai = _mm512_set1_ps(a[i]);
        c[i][0] = _mm512_fmadd_ps(ai, b0, c[i][0]);
        c[i][1] = _mm512_fmadd_ps(ai, b1, c[i][1]);
      }
    }
    alignas(64) float s[MR][NR];
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) _mm512_store_ps(s[i], c[i][0]), _mm512_store_ps(s[i] + 16, c[i][1]);
    const __mmask32 valid = lanes(n);
    for (int i = 0; i < m; ++i) select32(s[i], 1.0f, t.res[q0 + i], valid, r0, t);
  }
};

// c += a . b on int16 pairs into int32 (vpmaddwd + vpaddd). Written as asm: with the
// intrinsics, GCC 12 spills the 24 integer accumulators of the tile on every step.
inline void madd_acc(__m512i& c, __m512i a, __m512i b) {
  __m512i p;
  __asm__("vpmaddwd %2, %3, %1\n\tvpaddd %1, %0, %0" : "+v"(c), "=&v"(p) : "v"(a), "v"(b));
}

// int8 without VNNI: codes widened to int16 pairs, vpmaddwd (exact: |a*b + c*d| <= 2 * 127^2,
// unlike vpmaddubsw, which saturates) and vpaddd into 24 int32 accumulators; dequantized
// as (sum * s_ref) * s_query. A group holds [d/2][32][2] int16 codes, then 32 scales.
struct I8 : I16PairLayout<12, 32> {
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const int64_t d = t.refs->cols;
    const int32_t* a = static_cast<const int32_t*>(ap);
    const __m512i* b = static_cast<const __m512i*>(bp);
    __m512i c[MR][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_si512();
    for (int64_t p = 0; p < (d + 1) / 2; ++p, a += MR, b += 2) {
      const __m512i b0 = _mm512_load_si512(b), b1 = _mm512_load_si512(b + 1);
#pragma GCC unroll 12
      for (int i = 0; i < MR; ++i) {
        const __m512i ai = _mm512_set1_epi32(a[i]);
        madd_acc(c[i][0], ai, b0);
        madd_acc(c[i][1], ai, b1);
      }
    }
    const float* sr = reinterpret_cast<const float*>(static_cast<const char*>(bp) + scale_offset(d));
    const __m512 sr0 = _mm512_loadu_ps(sr), sr1 = _mm512_loadu_ps(sr + 16);
    alignas(64) float s[MR][NR];
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      _mm512_store_ps(s[i], _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, c[i][0]), sr0));
      _mm512_store_ps(s[i] + 16, _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, c[i][1]), sr1));
    }
    const __mmask32 valid = lanes(n);
    for (int i = 0; i < m; ++i) select32(s[i], t.qscale[q0 + i], t.res[q0 + i], valid, r0, t);
  }
};

}  // namespace

void scan_avx512(ScanTask& t) {
  if (t.precision == Precision::int8)
    scan<I8>(t);
  else
    scan<F32>(t);
}

void rerank_avx512(const RerankTask& t) { rerank_rows(t); }

}  // namespace memlens::cpu
