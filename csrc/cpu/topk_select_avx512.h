// AVX-512 epilogue shared by the avx512 and avx512bf16 scan units (internal linkage in each).
#pragma once
#include <immintrin.h>

#include "topk_scan.h"

namespace memlens::cpu {
namespace {

// Threshold test of one query's 32 scores s (times `scale`): one compare per 16 lanes.
// NLE_UQ is "not <=", true while the threshold is still NaN (reservoir not yet full). The
// threshold may rise while survivors are pushed, so each is re-tested.
//
// The kernels write their finished tile to a stack array with constant indices and this
// reads it back: indexing the accumulators by the (run-time) number of valid rows would
// make GCC keep them in memory inside the hot loop.
inline void select32(float* s, float scale, Reservoir& r, __mmask32 valid, int64_t r0, ScanTask& t) {
  const __m512 th = _mm512_set1_ps(r.threshold), sc = _mm512_set1_ps(scale);
  const __m512 s0 = _mm512_mul_ps(_mm512_load_ps(s), sc), s1 = _mm512_mul_ps(_mm512_load_ps(s + 16), sc);
  __mmask32 m = (static_cast<__mmask32>(_mm512_cmp_ps_mask(s0, th, _CMP_NLE_UQ)) |
                 (static_cast<__mmask32>(_mm512_cmp_ps_mask(s1, th, _CMP_NLE_UQ)) << 16)) & valid;
  if (!m) return;
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
