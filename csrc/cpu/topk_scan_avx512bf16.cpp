// Reduced-precision scan kernels for AVX512_BF16 + AVX512_VNNI (Cooper Lake, Sapphire Rapids,
// Zen 4): bf16 pairs through vdpbf16ps and int8 quadruples through vpdpbusd, both with a
// 14 x 32 tile whose query operand is an embedded 32-bit broadcast.
#include <immintrin.h>

#include "topk_select_avx512.h"

namespace memlens::cpu {
namespace {

// bf16: pairs of consecutive elements, [d/2][14] query pairs and [d/2][32][2] reference
// values. vdpbf16ps multiplies exactly and accumulates in fp32 (denormals flushed; the error
// bound in topk.cpp accounts for both).
struct Bf16 {
  static constexpr int MR = 14, NR = 32, KG = 2;
  static int64_t a_bytes(int64_t d) { return (d + 1) / 2 * MR * 4; }
  static int64_t b_bytes(int64_t d) { return (d + 1) / 2 * NR * 4; }
  static void pack_a(const ScanTask& t, int64_t q0, int64_t m, void* dst) {
    uint16_t* a = static_cast<uint16_t*>(dst);
    const int64_t d = t.refs->cols;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = 0; p < d; ++p) a[(p / 2 * MR + i) * 2 + p % 2] = float_to_bf16(t.q[(q0 + i) * d + p]);
  }
  static void put_ref(const ScanTask&, const RowQuant& rq, int j, int64_t d, void* dst) {
    put_ref_bf16<NR>(rq, j, d, static_cast<uint16_t*>(dst));
  }
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const int32_t* a = static_cast<const int32_t*>(ap);
    const __m512i* b = static_cast<const __m512i*>(bp);
    __m512 c[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0, d2 = (t.refs->cols + 1) / 2; p < d2; ++p, a += MR, b += 2) {
      const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_load_si512(b));
      const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_load_si512(b + 1));
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) {
        const __m512bh ai = reinterpret_cast<__m512bh>(_mm512_set1_epi32(a[i]));
        c[i][0] = _mm512_dpbf16_ps(c[i][0], ai, b0);
        c[i][1] = _mm512_dpbf16_ps(c[i][1], ai, b1);
      }
    }
    alignas(64) float s[MR][NR];
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) _mm512_store_ps(s[i], c[i][0]), _mm512_store_ps(s[i] + 16, c[i][1]);
    const __mmask32 valid = lanes(n);
    for (int i = 0; i < m; ++i) select32(s[i], 1.0f, t.res[q0 + i], valid, r0, t);
  }
};

// c += a (u8) . b (s8) in groups of four. Written as asm: with the intrinsic, GCC 12 spills the
// 28 integer accumulators of the tile to the stack on every step.
inline void dpbusd(__m512i& c, __m512i a, __m512i b) { __asm__("vpdpbusd %2, %1, %0" : "+v"(c) : "v"(a), "v"(b)); }

// int8: vpdpbusd multiplies unsigned by signed bytes, so query codes travel as q + 128
// (in [1, 255]) and each reference column carries 128 * sum(codes), subtracted at the end.
// int32 arithmetic wraps, so the result is exact whenever the true sum fits (checked by
// topk_candidates). A group holds [d/4][32][4] codes, then 32 scales and 32 corrections.
struct I8 {
  static constexpr int MR = 14, NR = 32, KG = 4;
  static int64_t scale_offset(int64_t d) { return (d + 3) / 4 * NR * 4; }
  static int64_t a_bytes(int64_t d) { return (d + 3) / 4 * MR * 4; }
  static int64_t b_bytes(int64_t d) { return scale_offset(d) + NR * 8; }
  static void pack_a(const ScanTask& t, int64_t q0, int64_t m, void* dst) {
    pack_a_codes<MR, 4>(t, q0, m, static_cast<uint8_t*>(dst), [](int32_t c) { return static_cast<uint8_t>(c + 128); });
  }
  static void put_ref(const ScanTask&, const RowQuant& rq, int j, int64_t d, void* dst) {
    put_ref_codes<NR, 4>(rq.codes, j, d, static_cast<int8_t*>(dst));
    int32_t sum = 0;
    for (int64_t p = 0; p < d; ++p) sum += rq.codes[p];
    float* sr = reinterpret_cast<float*>(static_cast<char*>(dst) + scale_offset(d));
    sr[j] = rq.scale;
    reinterpret_cast<int32_t*>(sr + NR)[j] = static_cast<int32_t>(128u * static_cast<uint32_t>(sum));
  }
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const int64_t d = t.refs->cols;
    const int32_t* a = static_cast<const int32_t*>(ap);
    const __m512i* b = static_cast<const __m512i*>(bp);
    __m512i c[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_si512();
    for (int64_t p = 0; p < (d + 3) / 4; ++p, a += MR, b += 2) {
      const __m512i b0 = _mm512_load_si512(b), b1 = _mm512_load_si512(b + 1);
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) {
        const __m512i ai = _mm512_set1_epi32(a[i]);
        dpbusd(c[i][0], ai, b0);
        dpbusd(c[i][1], ai, b1);
      }
    }
    const float* sr = reinterpret_cast<const float*>(static_cast<const char*>(bp) + scale_offset(d));
    const __m512 sr0 = _mm512_loadu_ps(sr), sr1 = _mm512_loadu_ps(sr + 16);
    const __m512i k0 = _mm512_loadu_si512(sr + NR), k1 = _mm512_loadu_si512(sr + NR + 16);
    alignas(64) float s[MR][NR];
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) {
      _mm512_store_ps(s[i], _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, _mm512_sub_epi32(c[i][0], k0)), sr0));
      _mm512_store_ps(s[i] + 16, _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, _mm512_sub_epi32(c[i][1], k1)), sr1));
    }
    const __mmask32 valid = lanes(n);
    for (int i = 0; i < m; ++i) select32(s[i], t.qscale[q0 + i], t.res[q0 + i], valid, r0, t);
  }
};

}  // namespace

void scan_avx512bf16(ScanTask& t) {
  if (t.precision == Precision::int8)
    scan<I8>(t);
  else
    scan<Bf16>(t);
}

}  // namespace memlens::cpu
