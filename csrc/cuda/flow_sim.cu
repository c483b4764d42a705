// CUDA flow-field similarity: PAIR and FIELD statistics of one generated flow field against N
// candidate fields in one streaming pass (API and contract: memlens/cuda_flow_sim.h; the
// definitions are python/memlens/reference/flow.py).
//
// Kernel design
// - Grid: one CTA per (candidate block of NB, frame t, chunk of <= 8192 consecutive pixels),
//   flattened into blockIdx.x with the candidate block fastest, so CTAs resident together
//   read the same gen tile (an L2 hit after the first). A thread owns pixels
//   p = start + tid + k*256 of the chunk: per step it issues all loads of kUnroll pixels
//   (gen + NB candidates: 5 independent 8-byte loads in flight) before computing.
// - Loads: packed (dx, dy) pairs with packed rows (the contiguous layout) are read as one
//   float2 / half2 per pixel, so a warp reads 256 (128) contiguous bytes per load; other
//   layouts use two scalar loads with explicit int64 strides (no copy). Candidates are read
//   with ld.global.cs (streamed once, evict-first) so that they do not push the gen frames,
//   re-read by the other candidate blocks, out of L2. (row, col) = divmod(p, W) by a
//   multiply-high with a host-computed magic number (exact for all 32-bit p).
// - Arithmetic: float32 per pixel (fp16 widened exactly), approximate sqrt / division (error
//   ~2 ulp, far below the 1e-5 budget). Each thread accumulates 12 statistics per candidate
//   (+ 8 gen FIELD statistics in the CTAs of candidate block 0: once per frame chunk, not per
//   candidate) in float32 registers over at most 32 pixels, then the CTA reduces them: a
//   warp-level reduce-scatter with shuffles (62 shuffles for 64 values instead of 320), then
//   float64 across warps in a fixed order. A frame split into several chunks writes float64
//   partials to the workspace, summed in a fixed order by a second small kernel: the results
//   are deterministic.
// - The motion mask |v| > mu_min is exact: IEEE sqrt is monotone, so it equals
//   fl64(vx^2 + vy^2) > thr with thr = the largest double whose sqrt is <= mu_min (computed
//   on the host), and the squares of float32 components are exact in float64. The float32
//   test is used unless the float32 squared norm is within its error bound of the threshold;
//   such lanes (rare) redo the test in float64.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "cuda_check.cuh"
#include "memlens/cuda_flow_sim.h"

namespace memlens {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Pixels per thread per step, all loaded before any is computed. 1 keeps NB = 4 within the
// 128-register cap of 2 CTAs per SM (2 rematerializes the candidate pointers every step: ~15%
// more instructions per pixel); to be confirmed on an H100 (-DMEMLENS_FLOW_UNROLL=2).
#ifndef MEMLENS_FLOW_UNROLL
#define MEMLENS_FLOW_UNROLL 1
#endif
constexpr int kUnroll = MEMLENS_FLOW_UNROLL;
constexpr int64_t kPixelStep = int64_t(kThreads) * kUnroll;  // chunk sizes are multiples
constexpr int64_t kMaxChunk = 8192;       // <= 32 pixels per thread in float32
constexpr int64_t kTargetBlocks = 2048;   // ~8 waves of 2 CTAs per SM on an H100
constexpr int64_t kMaxPixels = (int64_t(1) << 31) - 2 * kMaxChunk;
constexpr size_t kAlign = 256;
constexpr double kFastMuMin = 1e-15;  // outside [min, max] every test is done in float64
constexpr double kFastMuMax = 1e15;

struct FlowArgs {
  const void* gen;
  const void* cands;
  int64_t g_st, g_sh, g_sw, g_sc;
  int64_t c_sn, c_st, c_sh, c_sw, c_sc;
  const double* gaff;  // (T, 6) or null
  const double* caff;  // (N, T, 6) or null
  double* pair;        // [chunk * chunk_stride + (n*T + t)*4 + k]
  double* cfield;      // [chunk * chunk_stride + (n*T + t)*8 + k]
  double* gfield;      // [chunk * chunk_stride + t*8 + k]
  int64_t chunk_stride;
  int32_t n, t, hw, w;
  int32_t n_blocks, chunks, chunk_pixels;
  uint32_t div_m;  // divmod(p, W): magic multiplier and shift (-1: W == 1)
  int32_t div_s;
  float inv_w, inv_h, thr32;
  double inv_w64, inv_h64, thr;
  bool mu_zero, exact_only;
};

// ------------------------------------------------------------------------ device helpers

// Approximate sqrt and division with subnormals flushed: one MUFU (+ one FMUL) each instead
// of the range-fixing sequences of the non-ftz forms. Used for values only (magnitudes, cosines,
// ratios: error ~2 ulp); a flushed subnormal input is a flow below 1e-19 px.
__device__ __forceinline__ float fast_sqrt(float x) {
  float y;
  asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// a / b for a normal b (every denominator here is >= 1e-30).
__device__ __forceinline__ float fast_div(float a, float b) {
  float y;
  asm("div.approx.ftz.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
  return y;
}

// Granlund-Montgomery round-up division, exact for every 32-bit p.
__device__ __forceinline__ int row_of(int p, const FlowArgs& a) {
  if (a.div_s < 0) return p;
  const uint32_t u = static_cast<uint32_t>(p);
  const uint32_t hi = __umulhi(a.div_m, u);
  return static_cast<int>((hi + ((u - hi) >> 1)) >> a.div_s);
}

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  template <bool STREAM>
  static __device__ __forceinline__ float2 pair(const float* p) {
    const float2* q = reinterpret_cast<const float2*>(p);
    return STREAM ? __ldcs(q) : __ldg(q);
  }
  template <bool STREAM>
  static __device__ __forceinline__ float one(const float* p) {
    return STREAM ? __ldcs(p) : __ldg(p);
  }
};

template <>
struct Elem<__half> {
  template <bool STREAM>
  static __device__ __forceinline__ float2 pair(const __half* p) {
    const __half2* q = reinterpret_cast<const __half2*>(p);
    return __half22float2(STREAM ? __ldcs(q) : __ldg(q));
  }
  template <bool STREAM>
  static __device__ __forceinline__ float one(const __half* p) {
    return __half2float(STREAM ? __ldcs(p) : __ldg(p));
  }
};

// (dx, dy) of pixel p = (i, j) of the frame starting at `f`.
template <typename T, bool PAIRED, bool STREAM>
__device__ __forceinline__ float2 load_uv(const T* f, int p, int i, int j, int64_t sh, int64_t sw,
                                          int64_t sc) {
  if (PAIRED) return Elem<T>::template pair<STREAM>(f + 2 * static_cast<int64_t>(p));
  const T* q = f + i * sh + j * sw;
  return make_float2(Elem<T>::template one<STREAM>(q), Elem<T>::template one<STREAM>(q + sc));
}

// MAG_SUM, SQ_SUM, SU_X, SXU_X, SYU_X, SU_Y, SXU_Y, SYU_Y.
__device__ __forceinline__ void add_field(float* acc, float ux, float uy, float sq, float mag,
                                          float x, float y) {
  acc[0] += mag;
  acc[1] += sq;
  acc[2] += ux;
  acc[3] = fmaf(x, ux, acc[3]);
  acc[4] = fmaf(y, ux, acc[4]);
  acc[5] += uy;
  acc[6] = fmaf(x, uy, acc[6]);
  acc[7] = fmaf(y, uy, acc[7]);
}

// 2^-19 * sum |params|: bound on the per-component error of a float32 affine residual.
__device__ __forceinline__ float affine_slack(const float* c) {
  float s = 0.f;
#pragma unroll
  for (int q = 0; q < 6; ++q) s += fabsf(c[q]);
  return s * 0x1p-19f;
}

// Fast float32 test of |v| > mu_min for v = u - affine (or u), and whether it is uncertain.
// s = fma(vx, vx, vy^2) is within 2^-22 s of exact and thr32 within 2^-24 thr, so `band`
// (2^-19 thr32, +inf when every test must be exact) covers them; a float32 residual may be off
// by `slack` per component, adding 2 slack (|vx| + |vy| + slack). NONZERO (mu_min = 0, no
// affine): the exact test is u != 0, so nothing is uncertain (and no float32 underflow).
template <bool NONZERO, bool AFF>
__device__ __forceinline__ bool fast_moving(float s, float vx, float vy, float ux, float uy,
                                            float thr32, float band, float slack,
                                            bool& uncertain) {
  if (NONZERO) {
    uncertain = false;
    return ux != 0.f || uy != 0.f;
  }
  if (AFF) band += 2.f * slack * (fabsf(vx) + fabsf(vy) + slack);
  uncertain = fabsf(s - thr32) <= band;
  return s > thr32;
}

// The exact test, in float64 (rare: out of line, so the hot loop carries no float64 state).
// Without affine fma(wx, wx, wy*wy) == fl64(ux^2 + uy^2), the reference's squared norm, since
// both squares of float32 numbers are exact in float64; sqrt being monotone, comparing it with
// thr (the largest double whose sqrt is <= mu_min) is the reference's |u| > mu_min.
__device__ __noinline__ bool exact_moving(float ux, float uy, const double* aff, int i, int j,
                                          double inv_w, double inv_h, double thr) {
  double wx = ux, wy = uy;
  if (aff != nullptr) {
    const double x = (2.0 * j + 1.0) * inv_w - 1.0;
    const double y = (2.0 * i + 1.0) * inv_h - 1.0;
    wx -= aff[0] + aff[1] * x + aff[2] * y;
    wy -= aff[3] + aff[4] * x + aff[5] * y;
  }
  return fma(wx, wx, wy * wy) > thr;
}

// Sum of v[0..V) over the 32 lanes of a warp, as a reduce-scatter: at each of the 5 steps a lane
// keeps half of its values, adds the partner's copy of that half and sends the other half
// (V/2 + V/4 + ... shuffles instead of 5 V). Afterwards lane l holds, in v[0..V/32), the totals
// of the values l * (V/32) + q.
template <int H, int BIT>
__device__ __forceinline__ void reduce_scatter_step(float* v, int lane) {
  const bool upper = (lane & BIT) != 0;
#pragma unroll
  for (int q = 0; q < H; ++q) {
    const float send = upper ? v[q] : v[q + H];
    const float keep = upper ? v[q + H] : v[q];
    v[q] = keep + __shfl_xor_sync(0xffffffffu, send, BIT);
  }
}

template <int V>
__device__ __forceinline__ void warp_reduce_scatter(float* v, int lane) {
  static_assert(V == 32 || V == 64, "V must be 32 or 64");
  // compile-time steps: every index into v stays a constant, so v lives in registers
  reduce_scatter_step<V / 2, 16>(v, lane);
  reduce_scatter_step<V / 4, 8>(v, lane);
  reduce_scatter_step<V / 8, 4>(v, lane);
  reduce_scatter_step<V / 16, 2>(v, lane);
  reduce_scatter_step<V / 32, 1>(v, lane);
}

constexpr int pow2_at_least(int x, int lo) {
  int p = lo;
  while (p < x) p *= 2;
  return p;
}

// ----------------------------------------------------------------------------- kernels

template <typename TG, typename TC, int NB, bool PAIRED, bool AFFINE, bool MUZ>
__global__ void __launch_bounds__(kThreads, 2) flow_sim_kernel(const FlowArgs a) {
  constexpr int kVals = NB * 12 + 8;  // per candidate: 4 PAIR + 8 FIELD; then 8 gen FIELD
  constexpr int kPad = pow2_at_least(kVals, 32);
  __shared__ double red[kWarps][kPad];

  const int64_t bid = blockIdx.x;
  const int nb = static_cast<int>(bid % a.n_blocks);
  const int64_t rest = bid / a.n_blocks;
  const int chunk = static_cast<int>(rest % a.chunks);
  const int t = static_cast<int>(rest / a.chunks);
  const bool do_gen = nb == 0;  // gen FIELD statistics once per (t, chunk)

  const TG* gen = static_cast<const TG*>(a.gen) + t * a.g_st;
  const TC* cand[NB];
  bool live[NB];
#pragma unroll
  for (int k = 0; k < NB; ++k) {
    const int n = nb * NB + k;
    live[k] = n < a.n;
    // a row past N (last candidate block only) reads candidate 0 and is never written out:
    // no per-pixel branch on it
    cand[k] = static_cast<const TC*>(a.cands) + static_cast<int64_t>(live[k] ? n : 0) * a.c_sn +
              t * a.c_st;
  }

  // affine parameters: float32 copies for the fast path, float64 pointers for the exact one
  float ga[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  float ca[NB][6];
  float g_slack = 0.f;
  float c_slack[NB];
  const double* gaff = nullptr;
  const double* caff[NB];
#pragma unroll
  for (int k = 0; k < NB; ++k) {
    caff[k] = nullptr;
    c_slack[k] = 0.f;
#pragma unroll
    for (int q = 0; q < 6; ++q) ca[k][q] = 0.f;
  }
  if (AFFINE) {
    if (a.gaff != nullptr) {
      gaff = a.gaff + static_cast<int64_t>(t) * 6;
#pragma unroll
      for (int q = 0; q < 6; ++q) ga[q] = static_cast<float>(gaff[q]);
      g_slack = affine_slack(ga);
    }
    if (a.caff != nullptr) {
#pragma unroll
      for (int k = 0; k < NB; ++k) {
        if (!live[k]) continue;
        caff[k] = a.caff + (static_cast<int64_t>(nb * NB + k) * a.t + t) * 6;
#pragma unroll
        for (int q = 0; q < 6; ++q) ca[k][q] = static_cast<float>(caff[k][q]);
        c_slack[k] = affine_slack(ca[k]);
      }
    }
  }

  // threshold test: float32 band (+inf: every test exact)
  const float thr32 = a.thr32;
  const float band0 = a.exact_only ? __int_as_float(0x7f800000) : thr32 * 0x1p-19f;

  float acc[kPad];  // [k*12 + 0..3] PAIR, [k*12 + 4..11] FIELD, [NB*12 + 0..7] gen FIELD
#pragma unroll
  for (int q = 0; q < kPad; ++q) acc[q] = 0.f;

  const int start = chunk * a.chunk_pixels;
  const int end = min(start + a.chunk_pixels, a.hw);
  for (int base = start + static_cast<int>(threadIdx.x); base < end; base += kPixelStep) {
    float2 gv[kUnroll];
    float2 rv[kUnroll][NB];
    int pi[kUnroll], pj[kUnroll];
    // all loads of the step first (clamped to a valid pixel: no branch around them)
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p0 = base + u * kThreads;
      const int p = p0 < end ? p0 : start;
      const int i = row_of(p, a);
      const int j = p - i * a.w;
      pi[u] = p0 < end ? i : -1;
      pj[u] = j;
      gv[u] = load_uv<TG, PAIRED, false>(gen, p, i, j, a.g_sh, a.g_sw, a.g_sc);
#pragma unroll
      for (int k = 0; k < NB; ++k)
        rv[u][k] = load_uv<TC, PAIRED, true>(cand[k], p, i, j, a.c_sh, a.c_sw, a.c_sc);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = pi[u];
      if (i < 0) continue;
      const int j = pj[u];
      const float x = fmaf(static_cast<float>(2 * j + 1), a.inv_w, -1.f);
      const float y = fmaf(static_cast<float>(2 * i + 1), a.inv_h, -1.f);
      const float gx = gv[u].x, gy = gv[u].y;
      const float gsq = fmaf(gx, gx, gy * gy);
      if (do_gen) add_field(acc + NB * 12, gx, gy, gsq, fast_sqrt(gsq), x, y);
      float vx = gx, vy = gy, g2 = gsq;
      if (AFFINE && gaff != nullptr) {
        vx -= fmaf(ga[2], y, fmaf(ga[1], x, ga[0]));
        vy -= fmaf(ga[5], y, fmaf(ga[4], x, ga[3]));
        g2 = fmaf(vx, vx, vy * vy);
      }
      bool uncertain;
      bool g_ok;
      if (AFFINE && gaff != nullptr)
        g_ok = fast_moving<false, true>(g2, vx, vy, gx, gy, thr32, band0, g_slack, uncertain);
      else
        g_ok = fast_moving<MUZ, false>(g2, vx, vy, gx, gy, thr32, band0, 0.f, uncertain);
      if (uncertain) g_ok = exact_moving(gx, gy, gaff, i, j, a.inv_w64, a.inv_h64, a.thr);
      const float gm = fast_sqrt(g2);
#pragma unroll
      for (int k = 0; k < NB; ++k) {
        const float rx = rv[u][k].x, ry = rv[u][k].y;
        const float rsq = fmaf(rx, rx, ry * ry);
        const float rmag = fast_sqrt(rsq);
        float* ak = acc + k * 12;
        add_field(ak + 4, rx, ry, rsq, rmag, x, y);
        float wx = rx, wy = ry, r2 = rsq, rm = rmag;
        if (AFFINE && caff[k] != nullptr) {
          wx -= fmaf(ca[k][2], y, fmaf(ca[k][1], x, ca[k][0]));
          wy -= fmaf(ca[k][5], y, fmaf(ca[k][4], x, ca[k][3]));
          r2 = fmaf(wx, wx, wy * wy);
          rm = fast_sqrt(r2);
        }
        bool r_ok;
        if (AFFINE && caff[k] != nullptr)
          r_ok = fast_moving<false, true>(r2, wx, wy, rx, ry, thr32, band0, c_slack[k], uncertain);
        else
          r_ok = fast_moving<MUZ, false>(r2, wx, wy, rx, ry, thr32, band0, 0.f, uncertain);
        if (uncertain) r_ok = exact_moving(rx, ry, caff[k], i, j, a.inv_w64, a.inv_h64, a.thr);
        // branch-free accumulation
        const bool m = g_ok && r_ok;
        const float c = fast_div(fmaf(vx, wx, vy * wy), fmaf(gm, rm, 1e-8f));
        const float ratio = fast_div(fminf(gm, rm), fmaxf(fmaxf(gm, rm), 1e-30f));
        ak[0] += m ? 1.f : 0.f;
        ak[1] += m ? c : 0.f;
        ak[2] += m ? ratio : 0.f;
        ak[3] += m ? c * ratio : 0.f;
      }
    }
  }

  // CTA reduction: warp reduce-scatter in float32, then float64 across warps (fixed order)
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  warp_reduce_scatter<kPad>(acc, lane);
  constexpr int kPer = kPad / 32;
#pragma unroll
  for (int q = 0; q < kPer; ++q) red[warp][lane * kPer + q] = static_cast<double>(acc[q]);
  __syncthreads();
  for (int v = static_cast<int>(threadIdx.x); v < kVals; v += kThreads) {
    double s = 0.0;
#pragma unroll
    for (int w8 = 0; w8 < kWarps; ++w8) s += red[w8][v];
    const int64_t base = static_cast<int64_t>(chunk) * a.chunk_stride;
    if (v < NB * 12) {
      const int k = v / 12, q = v % 12, n = nb * NB + k;
      if (n >= a.n) continue;
      const int64_t row = static_cast<int64_t>(n) * a.t + t;
      if (q < 4)
        a.pair[base + row * 4 + q] = s;
      else
        a.cfield[base + row * 8 + (q - 4)] = s;
    } else if (do_gen) {
      a.gfield[base + static_cast<int64_t>(t) * 8 + (v - NB * 12)] = s;
    }
  }
}

// out_s[e] = sum over chunks of part[c * stride + e] (fixed order), for the three outputs laid
// out one after the other in each chunk's partial block.
__global__ void sum_chunks_kernel(const double* part, int64_t stride, int chunks, int64_t n_pair,
                                  int64_t n_cfield, double* pair, double* cfield,
                                  double* gfield) {
  const int64_t total = stride;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int c = 0; c < chunks; ++c) s += part[c * stride + e];
    if (e < n_pair)
      pair[e] = s;
    else if (e < n_pair + n_cfield)
      cfield[e - n_pair] = s;
    else
      gfield[e - n_pair - n_cfield] = s;
  }
}

// ------------------------------------------------------------------------------- host side

std::string str(int64_t v) { return std::to_string(v); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Candidates sharing a gen tile. With affine subtraction the thread holds 6 more parameters per
// candidate: NB = 4 would spill on sm_90 under the 128-register cap of 2 CTAs per SM.
int cands_per_block(int64_t n, bool affine) {
  const int cap = affine ? 2 : 4;
  return static_cast<int>(std::min<int64_t>(cap, n >= 4 ? 4 : (n >= 2 ? 2 : 1)));
}

// Largest double s with sqrt(s) <= mu: |v| > mu  <=>  fl64(|v|^2) > s (IEEE sqrt is monotone).
double sq_threshold(double mu) {
  const double inf = std::numeric_limits<double>::infinity();
  double s = mu * mu;
  while (s > 0.0 && std::sqrt(s) > mu) s = std::nextafter(s, -inf);
  while (std::sqrt(std::nextafter(s, inf)) <= mu) s = std::nextafter(s, inf);
  return s;
}

using detail::device_of;
using detail::DeviceGuard;

// (dx, dy) packed as pairs with packed rows and 2-element aligned frames: one float2 / half2
// per pixel at offset 2p.
bool paired(const FlowField& f, int64_t h, int64_t w, bool batched) {
  const size_t elt = f.dtype == DType::f16 ? 2 : 4;
  const bool packed = f.stride_c == 1 && (f.stride_w == 2 || w == 1) &&
                      (f.stride_h == 2 * w || h == 1);
  const bool aligned = reinterpret_cast<uintptr_t>(f.data) % (2 * elt) == 0 &&
                       f.stride_t % 2 == 0 && (!batched || f.stride_n % 2 == 0);
  return packed && aligned;
}

template <typename TG, typename TC, int NB, bool PAIRED, bool AFFINE>
void launch(const FlowArgs& a, int64_t blocks, cudaStream_t st) {
  if (a.mu_zero)
    flow_sim_kernel<TG, TC, NB, PAIRED, AFFINE, true>
        <<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(a);
  else
    flow_sim_kernel<TG, TC, NB, PAIRED, AFFINE, false>
        <<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(a);
  MEMLENS_CUDA_CHECK_LAUNCH(flow_sim_kernel);
}

template <typename TG, typename TC, int NB, bool AFFINE>
void dispatch_layout(const FlowArgs& a, int64_t blocks, bool pair_path, cudaStream_t st) {
  if (pair_path)
    launch<TG, TC, NB, true, AFFINE>(a, blocks, st);
  else
    launch<TG, TC, NB, false, AFFINE>(a, blocks, st);
}

// NB = 4 only without affine (cands_per_block): 5 (NB, AFFINE) pairs per dtype and layout.
template <typename TG, typename TC>
void dispatch_nb(const FlowArgs& a, int nb, int64_t blocks, bool pair_path, bool affine,
                 cudaStream_t st) {
  if (affine) {
    if (nb == 2)
      dispatch_layout<TG, TC, 2, true>(a, blocks, pair_path, st);
    else
      dispatch_layout<TG, TC, 1, true>(a, blocks, pair_path, st);
  } else if (nb == 4) {
    dispatch_layout<TG, TC, 4, false>(a, blocks, pair_path, st);
  } else if (nb == 2) {
    dispatch_layout<TG, TC, 2, false>(a, blocks, pair_path, st);
  } else {
    dispatch_layout<TG, TC, 1, false>(a, blocks, pair_path, st);
  }
}

void check_dtype(const FlowField& f, const char* name) {
  if (f.dtype != DType::f32 && f.dtype != DType::f16)
    throw std::invalid_argument(std::string(name) +
                                " dtype must be f32 (code 0) or f16 (code 1); got code " +
                                str(static_cast<int>(f.dtype)));
}

}  // namespace

FlowSimPlan flow_sim_plan(int64_t n, int64_t t, int64_t h, int64_t w, bool affine) {
  if (n < 0 || t < 0 || h < 0 || w < 0)
    throw std::invalid_argument("sizes must be >= 0; got N=" + str(n) + ", T=" + str(t) +
                                ", H=" + str(h) + ", W=" + str(w));
  FlowSimPlan p;
  p.threads = kThreads;
  p.cands_per_block = cands_per_block(n, affine);
  const int64_t hw = h * w;
  if (n == 0 || t == 0 || hw == 0) return p;
  if (h > kMaxPixels || w > kMaxPixels || hw > kMaxPixels)
    throw std::invalid_argument("H * W must be < 2^31 - 16384 pixels; got H=" + str(h) +
                                ", W=" + str(w));
  const int64_t n_blocks = ceil_div(n, p.cands_per_block);
  // enough CTAs to fill the GPU, each with whole steps of kPixelStep pixels and at most
  // kMaxChunk (32 pixels per thread summed in float32)
  int64_t chunk = ceil_div(ceil_div(hw * std::min<int64_t>(n_blocks * t, kTargetBlocks),
                                    kTargetBlocks),
                           kPixelStep) *
                  kPixelStep;
  chunk = std::max<int64_t>(kPixelStep, std::min<int64_t>(chunk, kMaxChunk));
  p.chunk_pixels = chunk;
  p.chunks = ceil_div(hw, chunk);
  p.blocks = n_blocks * t * p.chunks;
  if (p.blocks > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("too many CTAs (N * T * H * W too large for one call); split "
                                "the candidates");
  p.workspace =
      p.chunks > 1 ? align_up(static_cast<size_t>(p.chunks * (n * t * 12 + t * 8)) * 8) : 0;
  return p;
}

size_t flow_sim_workspace_bytes(int64_t n, int64_t t, int64_t h, int64_t w, bool affine) {
  return flow_sim_plan(n, t, h, w, affine).workspace;
}

void flow_similarity(const FlowField& gen, const FlowField& cands, int64_t n, int64_t t,
                     int64_t h, int64_t w, double mu_min, const double* gen_affine,
                     const double* cand_affine, double* pair, double* gen_field,
                     double* cand_field, void* workspace, size_t workspace_bytes,
                     Stream stream) {
  const bool affine = gen_affine != nullptr || cand_affine != nullptr;
  const FlowSimPlan p = flow_sim_plan(n, t, h, w, affine);
  check_dtype(gen, "gen");
  check_dtype(cands, "cands");
  if (!(std::isfinite(mu_min) && mu_min >= 0.0))
    throw std::invalid_argument("mu_min must be a finite number >= 0; got " +
                                std::to_string(mu_min));
  if (gen.stride_t < 0 || gen.stride_h < 0 || gen.stride_w < 0 || gen.stride_c < 0 ||
      cands.stride_n < 0 || cands.stride_t < 0 || cands.stride_h < 0 || cands.stride_w < 0 ||
      cands.stride_c < 0)
    throw std::invalid_argument("strides must be >= 0");
  const int64_t hw = h * w;
  if (n > 0 && t > 0 && (pair == nullptr || cand_field == nullptr))
    throw std::invalid_argument("pair and cand_field pointers must not be null");
  if (t > 0 && gen_field == nullptr)
    throw std::invalid_argument("gen_field pointer must not be null");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (n == 0 || t == 0 || hw == 0) {  // empty: statistics of nothing are 0
    const void* any = t > 0 ? static_cast<const void*>(gen_field) : nullptr;
    if (any == nullptr) return;
    DeviceGuard guard(device_of(any, "gen_field"));
    if (n > 0) {
      MEMLENS_CUDA_CHECK(cudaMemsetAsync(pair, 0, static_cast<size_t>(n * t * 4) * 8, st));
      MEMLENS_CUDA_CHECK(cudaMemsetAsync(cand_field, 0, static_cast<size_t>(n * t * 8) * 8, st));
    }
    MEMLENS_CUDA_CHECK(cudaMemsetAsync(gen_field, 0, static_cast<size_t>(t * 8) * 8, st));
    return;
  }
  if (gen.data == nullptr || cands.data == nullptr)
    throw std::invalid_argument("gen and cands pointers must not be null");
  if (p.chunks > 1) {
    if (workspace == nullptr || workspace_bytes < p.workspace)
      throw std::invalid_argument("workspace too small: need " + std::to_string(p.workspace) +
                                  " bytes; got " + std::to_string(workspace_bytes));
    if (reinterpret_cast<uintptr_t>(workspace) % kAlign != 0)
      throw std::invalid_argument("workspace must be 256-byte aligned");
  }
  const int dev = device_of(gen.data, "gen");
  if (device_of(cands.data, "cands") != dev || device_of(pair, "pair") != dev ||
      (gen_affine != nullptr && device_of(gen_affine, "gen_affine") != dev) ||
      (cand_affine != nullptr && device_of(cand_affine, "cand_affine") != dev))
    throw std::invalid_argument("inputs, outputs and workspace must be on the same device");
  DeviceGuard guard(dev);

  FlowArgs a{};
  a.gen = gen.data;
  a.cands = cands.data;
  a.g_st = gen.stride_t;
  a.g_sh = gen.stride_h;
  a.g_sw = gen.stride_w;
  a.g_sc = gen.stride_c;
  a.c_sn = cands.stride_n;
  a.c_st = cands.stride_t;
  a.c_sh = cands.stride_h;
  a.c_sw = cands.stride_w;
  a.c_sc = cands.stride_c;
  a.gaff = gen_affine;
  a.caff = cand_affine;
  const int64_t n_pair = n * t * 4, n_cfield = n * t * 8;
  if (p.chunks == 1) {
    a.pair = pair;
    a.cfield = cand_field;
    a.gfield = gen_field;
    a.chunk_stride = 0;
  } else {
    double* part = static_cast<double*>(workspace);
    a.pair = part;
    a.cfield = part + n_pair;
    a.gfield = part + n_pair + n_cfield;
    a.chunk_stride = n_pair + n_cfield + t * 8;
  }
  a.n = static_cast<int32_t>(n);
  a.t = static_cast<int32_t>(t);
  a.hw = static_cast<int32_t>(hw);
  a.w = static_cast<int32_t>(w);
  const int nb = static_cast<int>(p.cands_per_block);
  a.n_blocks = static_cast<int32_t>(ceil_div(n, nb));
  a.chunks = static_cast<int32_t>(p.chunks);
  a.chunk_pixels = static_cast<int32_t>(p.chunk_pixels);
  if (w == 1) {
    a.div_m = 0;
    a.div_s = -1;
  } else {
    int l = 0;
    while ((int64_t(1) << l) < w) ++l;  // ceil(log2 W), W >= 2
    const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << l) - uint64_t(w))) / uint64_t(w) + 1;
    a.div_m = static_cast<uint32_t>(m);
    a.div_s = l - 1;
  }
  a.inv_w64 = 1.0 / static_cast<double>(w);
  a.inv_h64 = 1.0 / static_cast<double>(h);
  a.inv_w = static_cast<float>(a.inv_w64);
  a.inv_h = static_cast<float>(a.inv_h64);
  a.thr = sq_threshold(mu_min);
  a.thr32 = static_cast<float>(a.thr);
  a.mu_zero = mu_min == 0.0;
  a.exact_only = mu_min != 0.0 && !(mu_min >= kFastMuMin && mu_min <= kFastMuMax);

  const bool pair_path = paired(gen, h, w, false) && paired(cands, h, w, true);
  const bool g16 = gen.dtype == DType::f16, c16 = cands.dtype == DType::f16;
  if (!g16 && !c16)
    dispatch_nb<float, float>(a, nb, p.blocks, pair_path, affine, st);
  else if (g16 && c16)
    dispatch_nb<__half, __half>(a, nb, p.blocks, pair_path, affine, st);
  else if (!g16)
    dispatch_nb<float, __half>(a, nb, p.blocks, pair_path, affine, st);
  else
    dispatch_nb<__half, float>(a, nb, p.blocks, pair_path, affine, st);

  if (p.chunks > 1) {
    const int64_t total = a.chunk_stride;
    const int64_t blocks = std::min<int64_t>(ceil_div(total, kThreads), 1024);
    sum_chunks_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(
        static_cast<const double*>(workspace), total, a.chunks, n_pair, n_cfield, pair, cand_field,
        gen_field);
    MEMLENS_CUDA_CHECK_LAUNCH(sum_chunks_kernel);
  }
}

}  // namespace cuda
}  // namespace memlens
