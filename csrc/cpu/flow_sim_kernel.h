// Building blocks shared by the per-ISA flow-similarity kernels (flow_sim_<isa>.cpp).
//
// Everything here has internal linkage (anonymous namespace): each ISA unit compiles its own copy
// with its own -m flags, and no copy can leak into another unit through the linker. No std::
// templates, for the same reason (see flow_sim_internal.h).
//
// The float64 parts (gen preparation and the exact per-pixel PAIR terms) are compiled with
// floating-point contraction off: the reference evaluates a0 + a1*x + a2*y and x*x + y*y with
// separately rounded torch ops, and the valid-pixel mask must be decided from the same float64
// values, bit for bit, even in an AVX2/AVX-512 unit where GCC would otherwise fuse them into FMAs.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "flow_sim_internal.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace memlens::cpu {
namespace {

// Candidate pixels whose float32 sums are flushed to float64 at least this often: every float32
// lane then sums at most 16 terms (16 lanes x 16 vectors for AVX-512), so a row sum carries a
// relative error of at most ~16 ulp of its absolute sum before it joins the float64 total.
constexpr int64_t kChunkPixels = 256;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  uint32_t bits;
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else {
    const float sub = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24, exact
    return sign ? -sub : sub;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// Element `off` (in elements from data) of a flow array, as float (exact for f32 and f16).
inline float load_elem(const FlowArray& a, int64_t off) {
  if (a.dtype == DType::f16) return half_to_float(static_cast<const uint16_t*>(a.data)[off]);
  return static_cast<const float*>(a.data)[off];
}

inline int64_t gen_offset(const FlowJob& job, int64_t t, int64_t i, int64_t j) {
  return t * job.gen.stride_t + i * job.gen.stride_h + j * job.gen.stride_w;
}
inline int64_t cand_offset(const FlowJob& job, int64_t n, int64_t t, int64_t i) {
  return n * job.cands.stride_n + t * job.cands.stride_t + i * job.cands.stride_h;
}

// Whether candidate rows are read in place: the (W, 2) elements of a row are contiguous.
inline bool cand_rows_contiguous(const FlowJob& job) {
  return job.cands.stride_c == 1 && (job.cands.stride_w == 2 || job.shape.w == 1);
}

// One candidate row, gathered through arbitrary strides into interleaved float32 (x, y) pairs.
inline void gather_row(const FlowJob& job, int64_t n, int64_t t, int64_t i, float* out) {
  const FlowArray& c = job.cands;
  const int64_t base = cand_offset(job, n, t, i), w = job.shape.w;
  if (c.dtype == DType::f32) {
    const float* p = static_cast<const float*>(c.data) + base;
    for (int64_t j = 0; j < w; ++j) out[2 * j] = p[j * c.stride_w], out[2 * j + 1] = p[j * c.stride_w + c.stride_c];
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(c.data) + base;
    for (int64_t j = 0; j < w; ++j)
      out[2 * j] = half_to_float(p[j * c.stride_w]), out[2 * j + 1] = half_to_float(p[j * c.stride_w + c.stride_c]);
  }
}

// Software prefetch of the candidate data, at two distances. Far: a few rows ahead in the task's
// stream (which runs row by row through one candidate's block, then on to the next candidate),
// into L2: candidate blocks are long sequential runs, but the hardware prefetchers stop at every
// 4 KiB page boundary (torch's buffers are not on huge pages) and know nothing of the jump to the
// next candidate, so each page would otherwise start with a full memory latency. Near:
// kNearPrefetchBytes straight ahead in memory (the same row or the next), into L1, so the loads
// do not wait on L2 either. Each SIMD step prefetches its own `bytes` at both distances.
// Measured on a 2 MiB-L2 Xeon, 2 threads, float32, three interleaved rounds each: far into L2
// (prefetcht1) was 6% faster than into L1 (prefetcht0), 4 and 8 KiB alike, non-temporal 50%
// slower; adding the near prefetch (0.5-2 KiB alike) took another 7%.
constexpr int64_t kPrefetchBytes = 4096;
constexpr int64_t kNearPrefetchBytes = 1024;
inline void prefetch_ahead(const void* far, const void* here, int64_t bytes) {
  const char* f = static_cast<const char*>(far);
  const char* n = static_cast<const char*>(here) + kNearPrefetchBytes;
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(f + o, 0, 2), __builtin_prefetch(n + o, 0, 3);
}

// Everything one row kernel call needs: a candidate row (interleaved (x, y), float or half), the
// prepared gen row, the grid, the candidate's affine flow, and where its sums go.
struct RowArgs {
  const void* cand;
  const void* ahead;  // the row to prefetch (same layout as cand), at the same column
  // The prepared gen row, in blocks of 16 pixels: kGenPlanes runs of 16 floats each (GenPlane:
  // unit residual vector g / |g| as gx, gy; gm = |g|, -1 outside the mask; ig = 1 / |g|;
  // eig = 1e-8 / |g|), so that a SIMD step reads one contiguous stretch of gen (few streams for
  // the hardware prefetchers to track); and the mask as bits, one uint16 per block. Within a
  // block, position l holds pixel K::lane_pixel(l) (the lane order in which the kernel's
  // in-lane deinterleave delivers candidate pixels).
  const float* g;
  const uint16_t* gbits;
  const double* xp;            // wpad float64 grid x, in the same per-block lane order
  int64_t w;
  double y;                    // y_i of this row
  const double* aff;           // the candidate's 6 affine parameters, or nullptr
  double* acc;                 // kPartialStats x kMaxLanes lane-wise float64 sums
  const FlowJob* job;          // for the float64 fallback of undecided pixels
  int64_t n, t, i;
};

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

// Affine flow component c0 + c1*x + c2*y, rounded like the reference's torch expression.
inline double affine_at(const double* c, double x, double y) { return (c[0] + c[1] * x) + c[2] * y; }

// The PAIR terms of pixel (i, j) of candidate n, frame t, computed in float64 exactly as the
// reference computes them, added to lane 0 of acc. (rx, ry): the candidate's raw value.
// Used for every pixel by the scalar kernel and for the rare undecided pixels of the SIMD ones.
__attribute__((noinline)) void exact_pair(const FlowJob& job, int64_t n, int64_t t, int64_t i, int64_t j,
                                          double rx, double ry, double* acc) {
  const int64_t off = gen_offset(job, t, i, j);
  double gx = load_elem(job.gen, off), gy = load_elem(job.gen, off + job.gen.stride_c);
  const double x = job.xd[j], y = job.yd[i];
  if (job.gen_affine) {
    const double* a = job.gen_affine + t * 6;
    gx = gx - affine_at(a, x, y);
    gy = gy - affine_at(a + 3, x, y);
  }
  if (job.cand_affine) {
    const double* a = job.cand_affine + (n * job.shape.t + t) * 6;
    rx = rx - affine_at(a, x, y);
    ry = ry - affine_at(a + 3, x, y);
  }
  const double gm = std::sqrt(gx * gx + gy * gy), rm = std::sqrt(rx * rx + ry * ry);
  if (!(gm > job.mu_min && rm > job.mu_min)) return;
  const double c = (gx * rx + gy * ry) / (gm * rm + 1e-8);
  const double ratio = std::fmin(gm, rm) / std::fmax(std::fmax(gm, rm), 1e-300);
  acc[kCount * kMaxLanes] += 1.0;
  acc[kCosSum * kMaxLanes] += c;
  acc[kRatioSum * kMaxLanes] += ratio;
  acc[kCosRatioSum * kMaxLanes] += c * ratio;
}

// Reads row i of gen[t] as float64 planes ux[0, W), uy[0, W).
inline void load_gen_row(const FlowJob& job, int64_t t, int64_t i, double* ux, double* uy) {
  const FlowArray& g = job.gen;
  const int64_t w = job.shape.w, sw = g.stride_w, sc = g.stride_c, base = gen_offset(job, t, i, 0);
  if (g.dtype == DType::f32) {
    const float* p = static_cast<const float*>(g.data) + base;
    if (sc == 1 && sw == 2) {  // interleaved row: a loop the compiler vectorizes
      for (int64_t j = 0; j < w; ++j) ux[j] = p[2 * j], uy[j] = p[2 * j + 1];
    } else {
      for (int64_t j = 0; j < w; ++j) ux[j] = p[j * sw], uy[j] = p[j * sw + sc];
    }
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(g.data) + base;
    int64_t j = 0;
#if defined(__F16C__)
    if (sc == 1 && sw == 2)  // interleaved row: 4 pixels per F16C conversion, not one value per call
      for (; j + 4 <= w; j += 4) {
        alignas(32) float f[8];
        _mm256_store_ps(f, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * j))));
        for (int l = 0; l < 4; ++l) ux[j + l] = f[2 * l], uy[j + l] = f[2 * l + 1];
      }
#endif
    for (; j < w; ++j) ux[j] = half_to_float(p[j * sw]), uy[j] = half_to_float(p[j * sw + sc]);
  }
}

// Eight float64 lanes as a GCC vector (the unit's -m flags decide the registers), and
// `v += p[0..8)` from an unaligned address. Vectors are passed by reference only: a vector
// argument or return value would have a different ABI in each unit (-Wpsabi).
typedef double Lanes __attribute__((vector_size(64)));
inline void add_lanes(Lanes& v, const double* p) {
  Lanes t;
  std::memcpy(&t, p, sizeof t);
  v += t;
}
inline void add_lanes_product(Lanes& v, const double* p, const double* q) {
  Lanes a, b;
  std::memcpy(&a, p, sizeof a);
  std::memcpy(&b, q, sizeof b);
  v += a * b;
}

// The prepared planes of one gen row in pixel order: tg[p * wp + j] for GenPlane p, from the
// residual (vx, vy), its squared norm s2, norm and inverse norm (K::norm_pd), each value computed
// in float64 and rounded once. The mask is decided on s2 against job.mask_sq, which gives exactly
// the reference's sqrt(s2) > mu_min.
inline void gen_planes(const double* __restrict vx, const double* __restrict vy, const double* __restrict s2,
                       const double* __restrict norm, const double* __restrict inv, double mask_sq, int64_t wp,
                       float* __restrict tg) {
  for (int64_t j = 0; j < wp; ++j) {
    tg[kGx * wp + j] = static_cast<float>(vx[j] * inv[j]);  // inv: inf or NaN outside the mask, never used there
    tg[kGy * wp + j] = static_cast<float>(vy[j] * inv[j]);
    tg[kIg * wp + j] = static_cast<float>(inv[j]);
    tg[kEig * wp + j] = static_cast<float>(1e-8 * inv[j]);
    // gm = |u| > mu ? float(|u|) : -1, as a bit select: GCC does not if-convert the ternary.
    const float m = static_cast<float>(norm[j]);
    uint32_t mb;
    std::memcpy(&mb, &m, sizeof mb);
    const uint32_t keep = 0u - static_cast<uint32_t>(s2[j] > mask_sq);
    const uint32_t r = (mb & keep) | (0xbf800000u & ~keep);  // 0xbf800000: -1.0f
    std::memcpy(tg + kGm * wp + j, &r, sizeof r);
  }
}

// Prepares the task's block of gen rows once for all its candidates (layout: RowArgs::g): from the
// residual flow g (gen minus its affine flow), the unit vector g / |g|, |g| (-1 where the pixel is
// outside the mask, decided in float64 like the reference; padding lanes are outside too), 1 / |g|
// and 1e-8 / |g|, each computed in float64 and rounded once, and the mask bits.
// When `field` is given, also the gen FIELD statistics of the block, in float64.
// Plain loops over padded rows (zeros in the padding add nothing to the sums) that the compiler
// vectorizes for the unit's ISA; norms and inverse norms come from K::norm_pd (GCC keeps libm's
// sqrt scalar to honour errno, and a per-function -fno-math-errno does not change that).
template <class K>
void prepare_gen(const FlowJob& job, const FlowTask& task, const FlowScratch& s, double* field) {
  const int64_t w = job.shape.w, wp = job.wpad, h = job.shape.h;
  const int64_t i0 = task.b * job.rows_per_block, i1 = imin(i0 + job.rows_per_block, h);
  const double* aff = job.gen_affine ? job.gen_affine + task.t * 6 : nullptr;
  const double* xd = job.xd;
  double* __restrict ux = s.rowd;  // the row as given
  double* __restrict uy = ux + wp;
  double* __restrict sq = uy + wp;  // |u|^2
  double* __restrict un = sq + wp;  // |u|
  double* __restrict rx = un + wp;  // the residual (affine only)
  double* __restrict ry = rx + wp;
  double* __restrict rs = ry + wp;  // |residual|^2 (affine only)
  double* __restrict rn = rs + wp;  // |residual| (affine only)
  double* __restrict inv = rn + wp;  // 1 / |u| or 1 / |residual|, for the planes
  for (int64_t j = w; j < wp; ++j) ux[j] = 0.0, uy[j] = 0.0;
  // Lane-blocked float64 sums in GCC vector registers of 8 doubles (one zmm, two ymm or four
  // xmm, as the unit's ISA has): the compiler does not vectorize a reduction without
  // reassociation, and the same sums written as part[6][8] arrays came out as scalar code, 40% of
  // this function. Per row: |u|, |u|^2, u_x, x u_x, u_y, x u_y; y u_x and y u_y follow from the
  // row sums of u_x and u_y.
  constexpr int L = 8;
  static_assert(kPadPixels % L == 0, "rows are padded to whole lane blocks");
  double tot[kFieldStats] = {};
  for (int64_t i = i0; i < i1; ++i) {
    load_gen_row(job, task.t, i, ux, uy);
    const double y = job.yd[i];
    const double* vx = ux;
    const double* vy = uy;
    const double* s2 = sq;
    const double* norm = un;
    if (aff) {
      // Coefficients in locals (not re-read through a pointer the stores could alias): the
      // same expression as affine_at, in a form the vectorizer accepts.
      const double a0 = aff[0], a1 = aff[1], a2 = aff[2], b0 = aff[3], b1 = aff[4], b2 = aff[5];
      for (int64_t j = 0; j < wp; ++j) {
        const double dx = ux[j] - ((a0 + a1 * xd[j]) + a2 * y);
        const double dy = uy[j] - ((b0 + b1 * xd[j]) + b2 * y);
        rx[j] = dx;
        ry[j] = dy;
        rs[j] = dx * dx + dy * dy;
      }
      vx = rx, vy = ry, s2 = rs, norm = rn;
    }
    if (field || !aff) {
      for (int64_t j = 0; j < wp; ++j) sq[j] = ux[j] * ux[j] + uy[j] * uy[j];
      Lanes part[6] = {};
      if (field)
        for (int64_t j0 = 0; j0 < wp; j0 += L) {
          add_lanes(part[1], sq + j0);
          add_lanes(part[2], ux + j0);
          add_lanes_product(part[3], xd + j0, ux + j0);
          add_lanes(part[4], uy + j0);
          add_lanes_product(part[5], xd + j0, uy + j0);
        }
      K::norm_pd(sq, un, inv, wp);
      if (field) {
        for (int64_t j0 = 0; j0 < wp; j0 += L) add_lanes(part[0], un + j0);
        double r[6];
        for (int k = 0; k < 6; ++k) {
          r[k] = 0;
          for (int l = 0; l < L; ++l) r[k] += part[k][l];
        }
        tot[kMagSum] += r[0];
        tot[kSqSum] += r[1];
        tot[kSuX] += r[2];
        tot[kSxuX] += r[3];
        tot[kSyuX] += y * r[2];
        tot[kSuY] += r[4];
        tot[kSxuY] += r[5];
        tot[kSyuY] += y * r[4];
      }
    }
    // The planes in pixel order (vectorizable), then permuted into the row's blocks.
    float* tg = s.row;
    if (aff) K::norm_pd(rs, rn, inv, wp);
    gen_planes(vx, vy, s2, norm, inv, job.mask_sq, wp, tg);
    for (int64_t j = w; j < wp; ++j) tg[kGm * wp + j] = -1.0f;  // padding: outside the mask
    float* row = s.gen + (i - i0) * gen_row_floats(wp);
    uint16_t* bits = reinterpret_cast<uint16_t*>(row + kGenPlanes * wp);
    for (int64_t j0 = 0; j0 < wp; j0 += 16) {
      float* blk = row + j0 * kGenPlanes;
      for (int p = 0; p < kGenPlanes; ++p) K::permute16(tg + p * wp + j0, blk + p * 16);
      uint32_t b = 0;
      for (int l = 0; l < 16; ++l) b |= static_cast<uint32_t>(blk[kGm * 16 + l] >= 0.0f) << l;
      bits[j0 / 16] = static_cast<uint16_t>(b);
    }
  }
  if (field)
    for (int k = 0; k < kFieldStats; ++k) field[k] = tot[k];
}

#pragma GCC pop_options

// The exact float64 PAIR terms of the pixels j + K::lane_pixel(l) (l a set bit of `bits`) of a
// row, whose mask the float32 test left undecided. The SIMD kernels only record such lanes in their inner
// loop (a call there would clobber every vector register) and run this after each chunk.
template <class K, class E>
void exact_pending(const RowArgs& a, int64_t j, uint32_t bits) {
  const E* c = static_cast<const E*>(a.cand);
  for (; bits; bits &= bits - 1) {
    const int64_t p = j + K::lane_pixel(__builtin_ctz(bits));
    float rx, ry;
    if constexpr (sizeof(E) == 2) {
      rx = half_to_float(c[2 * p]);
      ry = half_to_float(c[2 * p + 1]);
    } else {
      rx = c[2 * p];
      ry = c[2 * p + 1];
    }
    exact_pair(*a.job, a.n, a.t, a.i, p, rx, ry, a.acc);
  }
}

// Sum of the kMaxLanes lane-wise partial sums of every statistic (pairwise, fixed order).
inline void reduce_lanes(const double* acc, double* out) {
  for (int s = 0; s < kPartialStats; ++s) {
    double v[kMaxLanes];
    for (int l = 0; l < kMaxLanes; ++l) v[l] = acc[s * kMaxLanes + l];
    for (int width = kMaxLanes / 2; width > 0; width /= 2)
      for (int l = 0; l < width; ++l) v[l] += v[l + width];
    out[s] = v[0];
  }
}

// The task loop shared by every ISA. K provides
//   static void norm_pd(const double* s, double* norm, double* inv, int64_t n)
//       norm[k] = sqrt(s[k]) and inv[k] = 1 / norm[k] for k < n (n a multiple of 8), correctly
//       rounded or within a few float64 ulp (0 -> norm 0; inv is not used where s[k] = 0)
//   static int lane_pixel(int l)                 the layout of prepared gen blocks (RowArgs)
//   static void permute16(const float* src, float* dst)   dst[l] = src[lane_pixel(l)], l < 16
//   template <class E, bool kAffine, int kEps> static void row(const RowArgs&)
// which adds the statistics of one candidate row (E = float or uint16_t half elements; kEps an
// EpsMode) into the lane-wise sums. Loop order: the task's gen rows are prepared once and stay in
// cache while every candidate of the task streams its rows past them (gen is reused N times;
// each candidate byte is read once, in long sequential runs).
template <class K>
void run_task(const FlowJob& job, const FlowTask& task, const FlowScratch& s) {
  const int64_t T = job.shape.t, N = job.shape.n, h = job.shape.h, wp = job.wpad;
  const int64_t i0 = task.b * job.rows_per_block, i1 = imin(i0 + job.rows_per_block, h);
  const int64_t slot = task.t * job.blocks + task.b;
  prepare_gen<K>(job, task, s, task.n0 == 0 ? job.gen_partial + slot * kFieldStats : nullptr);
  double* xp = s.rowd;  // free once gen is prepared
  for (int64_t j0 = 0; j0 < wp; j0 += 16)
    for (int l = 0; l < 16; ++l) xp[j0 + l] = job.xd[j0 + K::lane_pixel(l)];

  using RowFn = void (*)(const RowArgs&);
  const bool contiguous = cand_rows_contiguous(job);
  const bool half = contiguous && job.cands.dtype == DType::f16;
  const bool aff = job.cand_affine != nullptr;
  const int sel = (half ? 6 : 0) + (aff ? 3 : 0) + job.eps_mode;
  static constexpr RowFn table[12] = {
      K::template row<float, false, kExactEps>,    K::template row<float, false, kFirstOrder>,
      K::template row<float, false, kNoEps>,       K::template row<float, true, kExactEps>,
      K::template row<float, true, kFirstOrder>,   K::template row<float, true, kNoEps>,
      K::template row<uint16_t, false, kExactEps>, K::template row<uint16_t, false, kFirstOrder>,
      K::template row<uint16_t, false, kNoEps>,    K::template row<uint16_t, true, kExactEps>,
      K::template row<uint16_t, true, kFirstOrder>, K::template row<uint16_t, true, kNoEps>};
  const RowFn fn = table[sel];
  const int64_t esize = job.cands.dtype == DType::f16 ? 2 : 4;
  // Prefetch distance in rows of the task's stream (rows are read in place only when contiguous).
  const int64_t rows = i1 - i0, row_bytes = 2 * job.shape.w * esize;
  const int64_t ahead = contiguous ? (kPrefetchBytes + row_bytes - 1) / row_bytes : 0;
  for (int64_t n = task.n0; n < task.n1; ++n) {
    for (int k = 0; k < kPartialStats * kMaxLanes; ++k) s.acc[k] = 0;
    RowArgs a{};
    a.w = job.shape.w;
    a.xp = xp;
    a.aff = aff ? job.cand_affine + (n * T + task.t) * 6 : nullptr;
    a.acc = s.acc;
    a.job = &job;
    a.n = n;
    a.t = task.t;
    for (int64_t i = i0; i < i1; ++i) {
      const float* g = s.gen + (i - i0) * gen_row_floats(wp);
      a.g = g;
      a.gbits = reinterpret_cast<const uint16_t*>(g + kGenPlanes * wp);
      a.y = job.yd[i];
      a.i = i;
      if (contiguous) {
        a.cand = static_cast<const char*>(job.cands.data) + cand_offset(job, n, task.t, i) * esize;
        const int64_t k = (i - i0) + ahead;  // position of the row to prefetch, in the stream
        const int64_t pn = n + k / rows, pi = i0 + k % rows;
        a.ahead = pn < task.n1 ? static_cast<const char*>(job.cands.data) + cand_offset(job, pn, task.t, pi) * esize
                               : a.cand;
      } else {
        gather_row(job, n, task.t, i, s.row);
        a.cand = a.ahead = s.row;
      }
      fn(a);
    }
    reduce_lanes(s.acc, job.partial + (slot * N + n) * kPartialStats);
  }
}

}  // namespace
}  // namespace memlens::cpu
