// AVX-512 epilogue shared by the avx512 and avx512bf16 scan units (internal linkage in each).
#pragma once
#include <immintrin.h>

#include "topk_scan.h"

namespace memlens::cpu {
namespace {

// Threshold test of one query's 32 scores: one compare per 16 lanes; only survivors leave
// the registers. NLE_UQ is "not <=", true while the threshold is still NaN (reservoir not
// yet full). The threshold may rise while survivors are pushed, so each is re-tested.
inline void select32(__m512 s0, __m512 s1, Reservoir& r, __mmask32 valid, int64_t r0, ScanTask& t) {
  const __m512 th = _mm512_set1_ps(r.threshold);
  __mmask32 m = (static_cast<__mmask32>(_mm512_cmp_ps_mask(s0, th, _CMP_NLE_UQ)) |
                 (static_cast<__mmask32>(_mm512_cmp_ps_mask(s1, th, _CMP_NLE_UQ)) << 16)) & valid;
  if (!m) return;
  alignas(64) float s[32];
  _mm512_store_ps(s, s0);
  _mm512_store_ps(s + 16, s1);
  for (; m; m &= m - 1) {
    const int j = __builtin_ctz(m);
    if (!(s[j] <= r.threshold)) reservoir_push(r, s[j], r0 + j, t.k, t.cap, t.scratch);
  }
}

inline __mmask32 lanes(int n) { return n >= 32 ? ~__mmask32{0} : (__mmask32{1} << n) - 1; }

}  // namespace
}  // namespace memlens::cpu
