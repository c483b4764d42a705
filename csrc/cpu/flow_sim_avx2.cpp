// Flow-similarity kernel for AVX2 + FMA + F16C: 8 pixels per step, per-pixel terms in float32,
// lane-wise float32 sums over at most 128 pixels (16 terms a lane), then float64. The same
// algorithm as flow_sim_avx512.cpp (see there for the cost model and the formulas), with vector
// masks instead of mask registers.
#include <immintrin.h>

#include "flow_sim_kernel.h"

namespace memlens::cpu {
namespace {

constexpr int64_t kChunk = 128;  // 8 lanes x 16 steps
static_assert(kChunk <= kChunkPixels, "a float32 lane must not sum more terms than the AVX-512 one");

inline __m256d lo_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d hi_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

// acc[0..4) += v[0..4) + v[4..8), widened to float64 after one float32 add (see
// flow_sim_avx512.cpp). Lanes 4..15 of acc stay unused.
inline void flush4(double* acc, __m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_cvtps_pd(h)));
}
// su += U, sxu += w U - k Q, syu += y U in float64 (lanes 0..8); see flow_sim_avx512.cpp.
inline void flush_component(double* su, double* sxu, double* syu, const double* w, double k, double y, __m256 u,
                            __m256 q) {
  const __m256d u0 = lo_pd(u), u1 = hi_pd(u), q0 = lo_pd(q), q1 = hi_pd(q);
  const __m256d kk = _mm256_set1_pd(k), yy = _mm256_set1_pd(y);
  _mm256_storeu_pd(su, _mm256_add_pd(_mm256_loadu_pd(su), u0));
  _mm256_storeu_pd(su + 4, _mm256_add_pd(_mm256_loadu_pd(su + 4), u1));
  _mm256_storeu_pd(sxu, _mm256_fnmadd_pd(kk, q0, _mm256_fmadd_pd(_mm256_loadu_pd(w), u0, _mm256_loadu_pd(sxu))));
  _mm256_storeu_pd(sxu + 4,
                   _mm256_fnmadd_pd(kk, q1, _mm256_fmadd_pd(_mm256_loadu_pd(w + 4), u1, _mm256_loadu_pd(sxu + 4))));
  _mm256_storeu_pd(syu, _mm256_fmadd_pd(yy, u0, _mm256_loadu_pd(syu)));
  _mm256_storeu_pd(syu + 4, _mm256_fmadd_pd(yy, u1, _mm256_loadu_pd(syu + 4)));
}

// u - (c0 + c1 x) in float64, rounded once to float32.
inline __m256 residual(__m256 u, const double* x, double c0, double c1) {
  const __m256d k0 = _mm256_set1_pd(c0), k1 = _mm256_set1_pd(c1);
  const __m256d lo = _mm256_sub_pd(lo_pd(u), _mm256_fmadd_pd(k1, _mm256_loadu_pd(x), k0));
  const __m256d hi = _mm256_sub_pd(hi_pd(u), _mm256_fmadd_pd(k1, _mm256_loadu_pd(x + 4), k0));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}

// 1 / d: rcp (relative error < 1.5 * 2^-12) and one Newton step (~2^-23 + rounding).
inline __m256 rcp_nr(__m256 d, __m256 one) {
  const __m256 r = _mm256_rcp_ps(d);
  return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
}

// |r| and 1 / |r| from rsqrt (relative error < 1.5 * 2^-12) and one shared Newton step; see
// flow_sim_avx512.cpp. The residual error after the step is ~3.4e-7 relative at worst (1.5 e^2
// plus rounding), within float32 sums' tolerance.
struct Norm {
  __m256 n, inv;
};
inline Norm norm_nr(__m256 s, __m256 half, __m256 tiny) {
  const __m256 y = _mm256_rsqrt_ps(_mm256_add_ps(s, tiny));
  const __m256 sy = _mm256_mul_ps(s, y);
  const __m256 e = _mm256_fnmadd_ps(_mm256_mul_ps(half, y), sy, half);
  return {_mm256_fmadd_ps(sy, e, sy), _mm256_fmadd_ps(y, e, y)};
}

struct Avx2 {
  static void norm_pd(const double* s, double* norm, double* inv, int64_t n) {
    const __m256d one = _mm256_set1_pd(1.0);
    for (int64_t k = 0; k < n; k += 4) {
      const __m256d r = _mm256_sqrt_pd(_mm256_loadu_pd(s + k));
      _mm256_storeu_pd(norm + k, r);
      _mm256_storeu_pd(inv + k, _mm256_div_pd(one, r));
    }
  }

  // _mm256_shuffle_ps(v0, v1, 0x88 / 0xdd) deinterleaves 8 (x, y) pairs in-lane, yielding pixels
  // 0 1 4 5 | 2 3 6 7 of each step of 8.
  static int lane_pixel(int l) {
    const int b = l / 8, k = (l % 8) / 4, m = l % 4;
    return 8 * b + (m < 2 ? 2 * k + m : 4 + 2 * k + (m - 2));
  }
  static void permute16(const float* src, float* dst) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    _mm256_store_ps(dst, _mm256_permutevar8x32_ps(_mm256_loadu_ps(src), idx));
    _mm256_store_ps(dst + 8, _mm256_permutevar8x32_ps(_mm256_loadu_ps(src + 8), idx));
  }

  template <class E, bool kAffine, int kEps>
  static void row(const RowArgs& a) {
    const FlowJob& job = *a.job;
    const int64_t w = a.w;
    const double inv_w = 1.0 / static_cast<double>(w);
    const double* const xd = job.xd;
    const double* const xp = a.xp;
    const float* const gen = a.g;
    const __m256 lo = _mm256_set1_ps(job.lo), hi = _mm256_set1_ps(job.hi);
    const __m256 eps = _mm256_set1_ps(1e-8f), one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 half = _mm256_set1_ps(0.5f), tiny = _mm256_set1_ps(1.17549435e-38f);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    alignas(32) double lane_dx[8];  // 2 p(l) / W for the lanes of one step
    for (int l = 0; l < 8; ++l) lane_dx[l] = 2.0 * lane_pixel(l) * inv_w;
    double cx0 = 0, cx1 = 0, cy0 = 0, cy1 = 0;
    if constexpr (kAffine) {
      cx0 = a.aff[0] + a.aff[2] * a.y, cx1 = a.aff[1];
      cy0 = a.aff[3] + a.aff[5] * a.y, cy1 = a.aff[4];
    }
    double* acc = a.acc;
    uint32_t pending[kChunk / 8];
    alignas(32) E tail[16];
    for (int64_t c0 = 0; c0 < w; c0 += kChunk) {
      const int64_t c1 = imin(c0 + kChunk, w);
      __m256 cs = zero, rs = zero, crs = zero, mag = zero, sq = zero;
      __m256 sx = zero, sy = zero, qx = zero, qy = zero;
      uint32_t any = 0, count = 0;
      for (int64_t j = c0; j < c1; j += 8) {
        const int64_t p = c1 - j;
        const E* src = static_cast<const E*>(a.cand) + 2 * j;
        prefetch_ahead(static_cast<const E*>(a.ahead) + 2 * j, src, 16 * sizeof(E));
        if (p < 8) {  // the row's last pixels, zero-padded to a whole step
          std::memset(tail, 0, sizeof tail);
          std::memcpy(tail, src, static_cast<size_t>(2 * p) * sizeof(E));
          src = tail;
        }
        __m256 v0, v1;
        if constexpr (sizeof(E) == 2) {
          const __m256i hv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
          v0 = _mm256_cvtph_ps(_mm256_castsi256_si128(hv));
          v1 = _mm256_cvtph_ps(_mm256_extracti128_si256(hv, 1));
        } else {
          v0 = _mm256_loadu_ps(reinterpret_cast<const float*>(src));
          v1 = _mm256_loadu_ps(reinterpret_cast<const float*>(src) + 8);
        }
        const __m256 rx = _mm256_shuffle_ps(v0, v1, 0x88);
        const __m256 ry = _mm256_shuffle_ps(v0, v1, 0xdd);
        const __m256 s = _mm256_fmadd_ps(rx, rx, _mm256_mul_ps(ry, ry));
        Norm nr = norm_nr(s, half, tiny);
        mag = _mm256_add_ps(mag, nr.n);
        sq = _mm256_add_ps(sq, s);
        sx = _mm256_add_ps(sx, rx);
        sy = _mm256_add_ps(sy, ry);
        qx = _mm256_add_ps(qx, sx);
        qy = _mm256_add_ps(qy, sy);

        __m256 ux = rx, uy = ry, us = s;
        if constexpr (kAffine) {
          ux = residual(rx, xp + j, cx0, cx1);
          uy = residual(ry, xp + j, cy0, cy1);
          us = _mm256_fmadd_ps(ux, ux, _mm256_mul_ps(uy, uy));
          nr = norm_nr(us, half, tiny);
        }
        // This step's half of its block of prepared gen.
        const float* blk = gen + (j & ~int64_t{15}) * kGenPlanes + (j & 8);
        const __m256 gm = _mm256_load_ps(blk + kGm * 16), ig = _mm256_load_ps(blk + kIg * 16);
        const __m256 mg = _mm256_cmp_ps(gm, zero, _CMP_GE_OQ);
        const __m256 m = _mm256_and_ps(mg, _mm256_cmp_ps(us, hi, _CMP_GT_OQ));
        __m256 unc = _mm256_andnot_ps(m, _mm256_and_ps(mg, _mm256_cmp_ps(us, lo, _CMP_GE_OQ)));
        if constexpr (kEps == kExactEps)
          unc = _mm256_and_ps(unc, _mm256_cmp_ps(_mm256_and_ps(_mm256_or_ps(ux, uy), absmask), zero, _CMP_NEQ_OQ));
        const uint32_t ubits = static_cast<uint32_t>(_mm256_movemask_ps(unc));
        pending[(j - c0) >> 3] = ubits;
        any |= ubits;
        count += static_cast<uint32_t>(__builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(m))));

        const __m256 gx = _mm256_load_ps(blk + kGx * 16), gy = _mm256_load_ps(blk + kGy * 16);
        const __m256 dot = _mm256_fmadd_ps(gx, ux, _mm256_mul_ps(gy, uy));
        __m256 c;
        if constexpr (kEps == kExactEps) {
          c = _mm256_mul_ps(_mm256_mul_ps(dot, gm), rcp_nr(_mm256_fmadd_ps(gm, nr.n, eps), one));
        } else if constexpr (kEps == kFirstOrder) {
          const __m256 dc = _mm256_mul_ps(dot, nr.inv);
          c = _mm256_fnmadd_ps(dc, _mm256_mul_ps(_mm256_load_ps(blk + kEig * 16), nr.inv), dc);
        } else {
          c = _mm256_mul_ps(dot, nr.inv);
        }
        const __m256 ratio = _mm256_min_ps(_mm256_mul_ps(nr.n, ig), _mm256_mul_ps(gm, nr.inv));
        // Bitwise AND with the mask also clears the NaN/Inf terms of masked-out lanes.
        const __m256 mc = _mm256_and_ps(m, c), mr = _mm256_and_ps(m, ratio);
        cs = _mm256_add_ps(cs, mc);
        rs = _mm256_add_ps(rs, mr);
        crs = _mm256_fmadd_ps(mc, mr, crs);
      }
      const int64_t steps = (c1 - c0 + 7) / 8;
      alignas(32) double wx[8];
      const double base = xd[c0] + 16.0 * static_cast<double>(steps) * inv_w;
      for (int l = 0; l < 8; ++l) wx[l] = base + lane_dx[l];
      acc[kCount * kMaxLanes] += count;
      flush4(acc + kCosSum * kMaxLanes, cs);
      flush4(acc + kRatioSum * kMaxLanes, rs);
      flush4(acc + kCosRatioSum * kMaxLanes, crs);
      flush4(acc + (kPairStats + kMagSum) * kMaxLanes, mag);
      flush4(acc + (kPairStats + kSqSum) * kMaxLanes, sq);
      const double k = 16.0 * inv_w;
      flush_component(acc + (kPairStats + kSuX) * kMaxLanes, acc + (kPairStats + kSxuX) * kMaxLanes,
                      acc + (kPairStats + kSyuX) * kMaxLanes, wx, k, a.y, sx, qx);
      flush_component(acc + (kPairStats + kSuY) * kMaxLanes, acc + (kPairStats + kSxuY) * kMaxLanes,
                      acc + (kPairStats + kSyuY) * kMaxLanes, wx, k, a.y, sy, qy);
      if (__builtin_expect(any != 0, 0))
        for (int64_t j = c0; j < c1; j += 8)
          if (pending[(j - c0) >> 3]) exact_pending<Avx2, E>(a, j & ~int64_t{15}, pending[(j - c0) >> 3] << (j & 8));
    }
  }
};

}  // namespace

void flow_task_avx2(const FlowJob& job, const FlowTask& task, const FlowScratch& s) { run_task<Avx2>(job, task, s); }

}  // namespace memlens::cpu
