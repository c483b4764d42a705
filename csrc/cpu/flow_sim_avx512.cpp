// Flow-similarity kernel for AVX-512 F/BW/DQ/VL: 16 pixels per step, per-pixel terms in float32,
// lane-wise float32 sums over at most 256 pixels (16 terms a lane), then float64.
//
// Cost model (measured on Zen 4, which runs a 512-bit operation on a pair of 256-bit pipes):
// one 512-bit FMA/mul per cycle and one add alongside it, most other operations competing with
// the FMAs, vdivps/vsqrtps 6/10 cycles each. A step (16 pixels) is therefore written with ~30
// vector operations and no division or square root: rsqrt14/rcp14 with one Newton step,
// everything that depends only on gen prepared once per block (flow_sim_kernel.h), the
// x-weighted FIELD sums as plain adds (prefix sums), the count as a popcount. Measured ~2.2e9
// pixels/s per core with the data in cache (float32), i.e. faster than one core's share of DRAM
// bandwidth on that machine, so the full kernel is memory-bound for float32 inputs.
//
// GCC 12 flags the _mm512_undefined_*() operands inside its own conversion intrinsics as
// maybe-uninitialized (GCC bug 105593); the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "flow_sim_kernel.h"

namespace memlens::cpu {
namespace {

inline __m512d lo_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
inline __m512d hi_pd(__m512 v) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// acc[0..8) += v[0..8) + v[8..16), widened to float64 after one float32 add (the lane then holds
// a sum of at most 32 terms, combined pairwise at the top: error within 17 ulp of its abs sum).
inline void flush8(double* acc, __m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), _mm512_cvtps_pd(h)));
}
// The FIELD sums of one flow component of one row chunk, from its lane sums U and prefix sums Q:
// su += U, sxu += w U - k Q (see Avx512::row), syu += y U; all in float64, U converted once.
inline void flush_component(double* su, double* sxu, double* syu, const double* w, double k, double y, __m512 u,
                            __m512 q) {
  const __m512d u0 = lo_pd(u), u1 = hi_pd(u), q0 = lo_pd(q), q1 = hi_pd(q);
  const __m512d kk = _mm512_set1_pd(k), yy = _mm512_set1_pd(y);
  _mm512_storeu_pd(su, _mm512_add_pd(_mm512_loadu_pd(su), u0));
  _mm512_storeu_pd(su + 8, _mm512_add_pd(_mm512_loadu_pd(su + 8), u1));
  _mm512_storeu_pd(sxu, _mm512_fnmadd_pd(kk, q0, _mm512_fmadd_pd(_mm512_loadu_pd(w), u0, _mm512_loadu_pd(sxu))));
  _mm512_storeu_pd(sxu + 8,
                   _mm512_fnmadd_pd(kk, q1, _mm512_fmadd_pd(_mm512_loadu_pd(w + 8), u1, _mm512_loadu_pd(sxu + 8))));
  _mm512_storeu_pd(syu, _mm512_fmadd_pd(yy, u0, _mm512_loadu_pd(syu)));
  _mm512_storeu_pd(syu + 8, _mm512_fmadd_pd(yy, u1, _mm512_loadu_pd(syu + 8)));
}

// Residual of 16 float32 flow components after subtracting an affine component c0 + c1 x, x the
// float64 grid coordinates of the lanes' pixels (evaluated and subtracted in float64, so the
// residual is accurate to float32 rounding even when the affine flow is much larger than it).
inline __m512 residual(__m512 u, const double* x, double c0, double c1) {
  const __m512d k0 = _mm512_set1_pd(c0), k1 = _mm512_set1_pd(c1);
  const __m512d lo = _mm512_sub_pd(lo_pd(u), _mm512_fmadd_pd(k1, _mm512_loadu_pd(x), k0));
  const __m512d hi = _mm512_sub_pd(hi_pd(u), _mm512_fmadd_pd(k1, _mm512_loadu_pd(x + 8), k0));
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
}

// 1 / d to ~1 ulp: rcp14 (relative error < 2^-14) and one Newton step (error ~2^-28 + rounding).
inline __m512 rcp_nr(__m512 d, __m512 one) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);
}

// |r| = sqrt(s) and 1 / |r| for s >= 0 from one rsqrt14 and one Newton step shared by both:
// y ~ s^-1/2, e = 0.5 - 0.5 s y^2, then |r| = s y (1 + e) and 1 / |r| = y (1 + e) (~2 ulp).
// rsqrt of s + FLT_MIN keeps s = 0 at |r| = 0 (0 * finite) rather than 0 * inf, and is s
// itself for every s that can reach a sum (the tiny regime goes to float64 anyway).
struct Norm {
  __m512 n, inv;
};
inline Norm norm_nr(__m512 s, __m512 half, __m512 tiny) {
  const __m512 y = _mm512_rsqrt14_ps(_mm512_add_ps(s, tiny));
  const __m512 sy = _mm512_mul_ps(s, y);
  const __m512 e = _mm512_fnmadd_ps(_mm512_mul_ps(half, y), sy, half);
  return {_mm512_fmadd_ps(sy, e, sy), _mm512_fmadd_ps(y, e, y)};
}

struct Avx512 {
  // 1 / sqrt(s) from rsqrt14 (relative error < 2^-14) and two Newton steps in float64
  // (y <- y (3/2 - s y^2 / 2): error ~2^-27, then a few ulp), |r| = s y. vsqrtpd and vdivpd,
  // 16 cycles for 8 lanes each on the Xeon measured, were half the gen preparation. s = 0 gives
  // |r| = 0 (inv is then unused). Vectors holding a nonzero s below 2^-900 (only residuals
  // of extreme affine flows get there; rsqrt14 loses bits on float64 subnormals) take the
  // exact instructions.
  static void norm_pd(const double* s, double* norm, double* inv, int64_t n) {
    const __m512d half = _mm512_set1_pd(0.5), three_half = _mm512_set1_pd(1.5), one = _mm512_set1_pd(1.0);
    const __m512d tiny = _mm512_set1_pd(0x1p-900), zero = _mm512_setzero_pd();
    for (int64_t k = 0; k < n; k += 8) {
      const __m512d v = _mm512_loadu_pd(s + k);
      const __mmask8 nonzero = _mm512_cmp_pd_mask(v, zero, _CMP_NEQ_OQ);
      if (__builtin_expect(_mm512_mask_cmp_pd_mask(nonzero, v, tiny, _CMP_LT_OQ) != 0, 0)) {
        const __m512d r = _mm512_sqrt_pd(v);
        _mm512_storeu_pd(norm + k, r);
        _mm512_storeu_pd(inv + k, _mm512_div_pd(one, r));
        continue;
      }
      const __m512d hv = _mm512_mul_pd(half, v);
      __m512d y = _mm512_rsqrt14_pd(v);
      y = _mm512_mul_pd(y, _mm512_fnmadd_pd(_mm512_mul_pd(hv, y), y, three_half));
      y = _mm512_mul_pd(y, _mm512_fnmadd_pd(_mm512_mul_pd(hv, y), y, three_half));
      _mm512_storeu_pd(norm + k, _mm512_maskz_mul_pd(nonzero, v, y));
      _mm512_storeu_pd(inv + k, y);
    }
  }

  // _mm512_shuffle_ps(v0, v1, 0x88 / 0xdd) deinterleaves 16 (x, y) pairs in-lane: in each
  // 128-bit lane k it yields pixels 2k, 2k+1 (from v0) and 8+2k, 9+2k (from v1). One in-lane
  // shuffle each instead of a two-source permute; gen is prepared in the same order.
  static int lane_pixel(int l) {
    const int k = l / 4, m = l % 4;
    return m < 2 ? 2 * k + m : 8 + 2 * k + (m - 2);
  }
  static void permute16(const float* src, float* dst) {
    const __m512i idx = _mm512_setr_epi32(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
    _mm512_store_ps(dst, _mm512_permutexvar_ps(idx, _mm512_loadu_ps(src)));
  }

  // One candidate row. Per 16 pixels: deinterleave, |r|^2 and |r| (FIELD sums), the residual
  // and its norm (affine only), then the masked PAIR terms against the prepared gen row
  // (unit vector g^ = g / |g|, |g|, 1 / |g|, 1e-8 / |g|):
  //   ratio = min(|r| / |g|, |g| / |r|) = min(|r| (1/|g|), |g| (1/|r|))
  //   c     = g.r / (|g| |r| + 1e-8) = (g^.r / |r|) / (1 + e),  e = (1e-8 / |g|) / |r|
  //           (kEps: divided exactly, to first order, or e dropped; see FlowJob::eps_mode)
  // Pixels whose mask the float32 test cannot decide are recorded and recomputed in float64
  // (exact_pending) after each chunk; the count is a popcount of the mask.
  //
  // x-weighted FIELD sums without a multiply: within a chunk of B steps starting at pixel c0,
  // lane l of step b holds pixel c0 + 16 b + p(l) (p = lane_pixel), whose x is
  // x(c0) + (32 b + 2 p(l)) / W. With U = sum_b u_b and Q = sum_b P_b, P_b the running sum after
  // step b (sum_b b u_b = B U - Q), sum x u = (x(c0) + (32 B + 2 p(l)) / W) U - (32 / W) Q per
  // lane, evaluated in float64 at the flush.
  template <class E, bool kAffine, int kEps>
  static void row(const RowArgs& a) {
    const FlowJob& job = *a.job;
    const int64_t w = a.w;
    const double inv_w = 1.0 / static_cast<double>(w);
    const double* const xd = job.xd;
    const float* const gen = a.g;
    const uint16_t* const gbits = a.gbits;
    const E* const cand = static_cast<const E*>(a.cand);
    const __m512 lo = _mm512_set1_ps(job.lo), hi = _mm512_set1_ps(job.hi);
    const __m512 eps = _mm512_set1_ps(1e-8f), one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    const __m512 half = _mm512_set1_ps(0.5f), tiny = _mm512_set1_ps(1.17549435e-38f);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    alignas(64) double lane_dx[16];  // 2 p(l) / W
    for (int l = 0; l < 16; ++l) lane_dx[l] = 2.0 * lane_pixel(l) * inv_w;
    const double* const xp = a.xp;
    double cx0 = 0, cx1 = 0, cy0 = 0, cy1 = 0;
    if constexpr (kAffine) {
      // Per row the affine flow is linear in x: (a0 + a2 y) + a1 x.
      cx0 = a.aff[0] + a.aff[2] * a.y, cx1 = a.aff[1];
      cy0 = a.aff[3] + a.aff[5] * a.y, cy1 = a.aff[4];
    }
    double* acc = a.acc;
    uint32_t pending[kChunkPixels / 16];
    for (int64_t c0 = 0; c0 < w; c0 += kChunkPixels) {
      const int64_t c1 = imin(c0 + kChunkPixels, w);
      __m512 cs = zero, rs = zero, crs = zero, mag = zero, sq = zero;
      __m512 sx = zero, sy = zero, qx = zero, qy = zero;
      uint32_t any = 0, count = 0;
      for (int64_t j = c0; j < c1; j += 16) {
        const int64_t p = c1 - j;
        const E* src = cand + 2 * j;
        prefetch_ahead(static_cast<const E*>(a.ahead) + 2 * j, src, 32 * sizeof(E));
        __m512 v0, v1;
        if constexpr (sizeof(E) == 2) {  // two 256-bit loads: no extract of the upper half
          const __m256i* h = reinterpret_cast<const __m256i*>(src);
          if (p >= 16) {
            v0 = _mm512_cvtph_ps(_mm256_loadu_si256(h));
            v1 = _mm512_cvtph_ps(_mm256_loadu_si256(h + 1));
          } else {
            const int e = static_cast<int>(2 * p);
            v0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>(e >= 16 ? 0xffff : (1u << e) - 1), h));
            v1 = _mm512_cvtph_ps(
                _mm256_maskz_loadu_epi16(static_cast<__mmask16>(e > 16 ? (1u << (e - 16)) - 1 : 0), src + 16));
          }
        } else if (p >= 16) {
          v0 = _mm512_loadu_ps(src);
          v1 = _mm512_loadu_ps(src + 16);
        } else {  // the row's last pixels; lanes past the end read as 0 and count nowhere
          const int e = static_cast<int>(2 * p);
          v0 = _mm512_maskz_loadu_ps(static_cast<__mmask16>(e >= 16 ? 0xffff : (1u << e) - 1), src);
          v1 = _mm512_maskz_loadu_ps(static_cast<__mmask16>(e > 16 ? (1u << (e - 16)) - 1 : 0), src + 16);
        }
        const __m512 rx = _mm512_shuffle_ps(v0, v1, 0x88);
        const __m512 ry = _mm512_shuffle_ps(v0, v1, 0xdd);
        const __m512 s = _mm512_fmadd_ps(rx, rx, _mm512_mul_ps(ry, ry));
        Norm nr = norm_nr(s, half, tiny);
        mag = _mm512_add_ps(mag, nr.n);
        sq = _mm512_add_ps(sq, s);
        sx = _mm512_add_ps(sx, rx);
        sy = _mm512_add_ps(sy, ry);
        qx = _mm512_add_ps(qx, sx);
        qy = _mm512_add_ps(qy, sy);

        __m512 ux = rx, uy = ry, us = s;
        if constexpr (kAffine) {
          ux = residual(rx, xp + j, cx0, cx1);
          uy = residual(ry, xp + j, cy0, cy1);
          us = _mm512_fmadd_ps(ux, ux, _mm512_mul_ps(uy, uy));
          nr = norm_nr(us, half, tiny);
        }
        // Above hi the pixel is in the mask for certain; in [lo, hi] it is undecided.
        const __mmask16 mg = gbits[j >> 4];
        const __mmask16 m = _mm512_mask_cmp_ps_mask(mg, us, hi, _CMP_GT_OQ);
        __mmask16 unc = _mm512_mask_cmp_ps_mask(mg, us, lo, _CMP_GE_OQ) & static_cast<__mmask16>(~m);
        if constexpr (kEps == kExactEps)  // exact zero vectors are decided (|0| > mu_min is false)
          unc &= _mm512_test_epi32_mask(_mm512_castps_si512(_mm512_or_ps(ux, uy)), absmask);
        pending[(j - c0) >> 4] = unc;
        any |= unc;
        count += static_cast<uint32_t>(__builtin_popcount(m));

        const float* blk = gen + j * kGenPlanes;  // this step's block of prepared gen
        const __m512 gx = _mm512_load_ps(blk + kGx * 16), gy = _mm512_load_ps(blk + kGy * 16);
        const __m512 gm = _mm512_load_ps(blk + kGm * 16), ig = _mm512_load_ps(blk + kIg * 16);
        const __m512 dot = _mm512_fmadd_ps(gx, ux, _mm512_mul_ps(gy, uy));  // g^ . r
        __m512 c;
        if constexpr (kEps == kExactEps) {
          c = _mm512_mul_ps(_mm512_mul_ps(dot, gm), rcp_nr(_mm512_fmadd_ps(gm, nr.n, eps), one));
        } else if constexpr (kEps == kFirstOrder) {
          const __m512 dc = _mm512_mul_ps(dot, nr.inv);
          c = _mm512_fnmadd_ps(dc, _mm512_mul_ps(_mm512_load_ps(blk + kEig * 16), nr.inv), dc);
        } else {
          c = _mm512_mul_ps(dot, nr.inv);
        }
        const __m512 ratio = _mm512_min_ps(_mm512_mul_ps(nr.n, ig), _mm512_mul_ps(gm, nr.inv));
        cs = _mm512_mask_add_ps(cs, m, cs, c);
        rs = _mm512_mask_add_ps(rs, m, rs, ratio);
        crs = _mm512_mask3_fmadd_ps(c, ratio, crs, m);
      }
      const int64_t nsteps = (c1 - c0 + 15) / 16;
      alignas(64) double wx[16];
      const double base = xd[c0] + 32.0 * static_cast<double>(nsteps) * inv_w;
      for (int l = 0; l < 16; ++l) wx[l] = base + lane_dx[l];
      acc[kCount * kMaxLanes] += count;
      flush8(acc + kCosSum * kMaxLanes, cs);
      flush8(acc + kRatioSum * kMaxLanes, rs);
      flush8(acc + kCosRatioSum * kMaxLanes, crs);
      flush8(acc + (kPairStats + kMagSum) * kMaxLanes, mag);
      flush8(acc + (kPairStats + kSqSum) * kMaxLanes, sq);
      const double k = 32.0 * inv_w;
      flush_component(acc + (kPairStats + kSuX) * kMaxLanes, acc + (kPairStats + kSxuX) * kMaxLanes,
                      acc + (kPairStats + kSyuX) * kMaxLanes, wx, k, a.y, sx, qx);
      flush_component(acc + (kPairStats + kSuY) * kMaxLanes, acc + (kPairStats + kSxuY) * kMaxLanes,
                      acc + (kPairStats + kSyuY) * kMaxLanes, wx, k, a.y, sy, qy);
      if (__builtin_expect(any != 0, 0))
        for (int64_t k = c0; k < c1; k += 16)
          if (pending[(k - c0) >> 4]) exact_pending<Avx512, E>(a, k, pending[(k - c0) >> 4]);
    }
  }
};

}  // namespace

void flow_task_avx512(const FlowJob& job, const FlowTask& task, const FlowScratch& s) { run_task<Avx512>(job, task, s); }

}  // namespace memlens::cpu
