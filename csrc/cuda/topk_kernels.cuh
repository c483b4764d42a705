// Kernels of the CUDA top-k search.
//
// Pipeline (one stream, nothing of size nq x nr ever exists):
//   prep_queries  : queries -> padded [nq_pad][dpad] buffer in the compute type (fp32, bf16, or
//                   int8 + per-query scale), plus ||q_hat|| and ||q_hat - q|| for the error bound.
//   for each chunk of reference rows:
//     prep_refs   : rows read in place (any dtype/strides), normalized, converted to the compute
//                   type into a padded [chunk][dpad] buffer (+ per-row int8 scale); global maxima
//                   of ||r_tilde|| and ||r_hat - r_tilde|| for the error bound.
//     fused_topk  : grid (query tiles, slices). A CTA computes BQ x BR score tiles of its slice
//                   (SIMT fp32 FMA or WMMA tensor cores) into shared memory, then each query row
//                   appends the keys above its running k-th threshold to its list in global
//                   workspace; a list that could overflow is sorted (bitonic, shared memory) and
//                   cut to k, which raises the threshold. State persists across chunks.
//   merge_topk    : one CTA per query merges the sorted per-slice lists into the final top-k,
//                   decodes (score, index) and writes the error bound.
//
// Exactness: every (query, row) score is computed by the same instruction sequence wherever the
// row sits, so duplicate rows give bit-identical scores and the (score desc, index asc) key
// order reproduces the reference tie-break exactly.
//
// Performance notes (first version, chosen for clarity; measure before tuning): K tiles are
// loaded synchronously (no cp.async double buffering), the tensor-core paths use WMMA with a
// 64 x 128 CTA tile and a shared-memory epilogue, and the reference rows are converted once per
// chunk by a memory-bound pre-pass. Next steps toward G1: cp.async/TMA pipelining, BQ = 128,
// mma.sync (or wgmma on sm_90a) with the threshold filter applied to accumulator registers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "select.cuh"
#include "topk_config.h"

namespace memlens {
namespace cuda {
namespace detail {

// ------------------------------------------------------------------------------------------
// element conversion

template <typename T>
__device__ __forceinline__ float load_as_float(const T* p);
template <>
__device__ __forceinline__ float load_as_float<float>(const float* p) { return *p; }
template <>
__device__ __forceinline__ float load_as_float<__half>(const __half* p) { return __half2float(*p); }
template <>
__device__ __forceinline__ float load_as_float<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <int MODE>
struct ComputeType;
template <>
struct ComputeType<kModeF32> { using T = float; };
template <>
struct ComputeType<kModeBF16> { using T = __nv_bfloat16; };
template <>
struct ComputeType<kModeI8> { using T = int8_t; };

// Converts one (already scaled) value to the compute type; returns the value the tensor cores
// will see, as a float (dequantized with `scale` for int8), for the error statistics.
template <int MODE>
__device__ __forceinline__ float quantize(float x, float scale, typename ComputeType<MODE>::T* out);
template <>
__device__ __forceinline__ float quantize<kModeF32>(float x, float, float* out) {
  *out = x;
  return x;
}
template <>
__device__ __forceinline__ float quantize<kModeBF16>(float x, float, __nv_bfloat16* out) {
  const __nv_bfloat16 h = __float2bfloat16_rn(x);
  *out = h;
  return __bfloat162float(h);
}
template <>
__device__ __forceinline__ float quantize<kModeI8>(float x, float scale, int8_t* out) {
  // |x| <= max|x| = 127 * scale, so |x / scale| <= 127 up to rounding; clamp anyway.
  float v = scale > 0.0f ? rintf(__fdiv_rn(x, scale)) : 0.0f;
  v = fminf(fmaxf(v, -127.0f), 127.0f);
  *out = static_cast<int8_t>(v);
  return scale * v;
}

// ------------------------------------------------------------------------------------------
// pre-passes (one warp per row)

template <int MODE>
__global__ void __launch_bounds__(kThreads)
    prep_queries_kernel(const float* __restrict__ q, int64_t nq, int64_t d, int64_t dpad,
                        int64_t nq_pad, typename ComputeType<MODE>::T* __restrict__ out,
                        float* __restrict__ qscale, float* __restrict__ qnorm,
                        float* __restrict__ qdiff) {
  using T = typename ComputeType<MODE>::T;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t row = blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5); row < nq_pad;
       row += warps) {
    T* dst = out + row * dpad;
    if (row >= nq) {
      for (int64_t i = lane; i < dpad; i += 32) quantize<MODE>(0.0f, 0.0f, dst + i);
      if (lane == 0) qscale[row] = qnorm[row] = qdiff[row] = 0.0f;
      continue;
    }
    const float* src = q + row * d;
    float scale = 0.0f;
    if (MODE == kModeI8) {
      float mx = 0.0f;
      for (int64_t i = lane; i < d; i += 32) mx = fmaxf(mx, fabsf(src[i]));
      scale = __fdiv_rn(warp_max(mx), 127.0f);
    }
    float n2 = 0.0f, d2 = 0.0f;
    for (int64_t i = lane; i < dpad; i += 32) {
      const float x = i < d ? src[i] : 0.0f;
      const float y = quantize<MODE>(x, scale, dst + i);
      n2 = fmaf(y, y, n2);
      d2 = fmaf(y - x, y - x, d2);
    }
    n2 = warp_sum(n2);
    d2 = warp_sum(d2);
    if (lane == 0) {
      qscale[row] = scale;
      qnorm[row] = sqrtf(n2);
      qdiff[row] = sqrtf(d2);
    }
  }
}

// rstats[0] = max_r ||r_tilde|| (fp32 normalized row), rstats[1] = max_r ||r_hat - r_tilde||,
// as float bits (non-negative floats order like their bits), combined with atomicMax.
template <int MODE, typename In>
__global__ void __launch_bounds__(kThreads)
    prep_refs_kernel(const In* __restrict__ refs, int64_t row_stride, int64_t col_stride,
                     int64_t row0, int64_t rows, int64_t d, int64_t dpad, bool normalize,
                     typename ComputeType<MODE>::T* __restrict__ out, float* __restrict__ rscale,
                     unsigned int* __restrict__ rstats) {
  using T = typename ComputeType<MODE>::T;
  __shared__ float s_max[2][kThreads / 32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  float max_rn = 0.0f, max_diff = 0.0f;
  for (int64_t row = blockIdx.x * (kThreads / 32) + warp; row < rows; row += warps) {
    const In* src = refs + (row0 + row) * row_stride;
    float ss = 0.0f, mx = 0.0f;
    for (int64_t i = lane; i < d; i += 32) {
      const float v = load_as_float(src + i * col_stride);
      ss = fmaf(v, v, ss);
      mx = fmaxf(mx, fabsf(v));
    }
    ss = warp_sum(ss);
    mx = warp_max(mx);
    const float inv = normalize ? 1.0f / fmaxf(sqrtf(ss), 1e-12f) : 1.0f;
    // max_i |fl(v_i * inv)| == fl(max_i |v_i| * inv): rounding is monotone.
    const float scale = MODE == kModeI8 ? __fdiv_rn(mx * inv, 127.0f) : 0.0f;
    T* dst = out + row * dpad;
    float n2 = 0.0f, d2 = 0.0f;
    for (int64_t i = lane; i < dpad; i += 32) {
      const float x = i < d ? load_as_float(src + i * col_stride) * inv : 0.0f;
      const float y = quantize<MODE>(x, scale, dst + i);
      if (MODE != kModeF32) {
        n2 = fmaf(x, x, n2);
        d2 = fmaf(y - x, y - x, d2);
      }
    }
    if (MODE != kModeF32) {
      n2 = warp_sum(n2);
      d2 = warp_sum(d2);
      max_rn = fmaxf(max_rn, sqrtf(n2));
      max_diff = fmaxf(max_diff, sqrtf(d2));
    }
    if (MODE == kModeI8 && lane == 0) rscale[row] = scale;
  }
  if (MODE == kModeF32) return;
  if (lane == 0) {
    s_max[0][warp] = max_rn;
    s_max[1][warp] = max_diff;
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    float m = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) m = fmaxf(m, s_max[threadIdx.x][w]);
    if (m > 0.0f) atomicMax(rstats + threadIdx.x, __float_as_uint(m));
  }
}

// ------------------------------------------------------------------------------------------
// fused score tile + selection

struct FusedArgs {
  const void* qbuf;      // [nq_pad][dpad] compute type
  const float* qscale;   // [nq_pad] (int8)
  const void* rbuf;      // [chunk_rows][dpad] compute type
  const float* rscale;   // [chunk_rows] (int8)
  uint64_t* lists;       // [splits][nq][cap] keys
  int* cnt;              // [splits][nq] entries in each list
  uint64_t* thr;         // [splits][nq] running k-th key (0: fewer than k seen)
  int64_t nq, dpad, k, cap;
  int64_t rows;          // rows in this chunk
  int64_t slice_rows;    // rows per slice (multiple of BR)
  int64_t chunk_base;    // global index of the chunk's first row
  size_t union_bytes;    // bytes of the K-tile / sort-buffer union in shared memory
  int final_pass;        // last chunk: leave every list sorted and cut to k
};

// Score tile S[BQ][BR+4] (float) = queries[q0 : q0+BQ] . rows[r0 : r0+BR], fp32 SIMT.
__device__ __forceinline__ void score_tile_f32(const FusedArgs& a, int64_t q0, int64_t r0,
                                               float* S, unsigned char* U) {
  constexpr int BQ = TileCfg<kModeF32>::BQ, BR = TileCfg<kModeF32>::BR, LD = BQ + 4;
  static_assert(BQ == BR, "fp32 tile is square");
  const float* Q = static_cast<const float*>(a.qbuf);
  const float* R = static_cast<const float*>(a.rbuf);
  float* As = reinterpret_cast<float*>(U);  // [kBK][LD], k-major
  float* Bs = As + kBK * LD;                // [kBK][LD]
  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const int lrow = tid >> 3, lcol = (tid & 7) * 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int64_t k0 = 0; k0 < a.dpad; k0 += kBK) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = lrow + 32 * h;
      const float4 va = *reinterpret_cast<const float4*>(Q + (q0 + row) * a.dpad + k0 + lcol);
      const float4 vb = *reinterpret_cast<const float4*>(R + (r0 + row) * a.dpad + k0 + lcol);
      As[(lcol + 0) * LD + row] = va.x;
      As[(lcol + 1) * LD + row] = va.y;
      As[(lcol + 2) * LD + row] = va.z;
      As[(lcol + 3) * LD + row] = va.w;
      Bs[(lcol + 0) * LD + row] = vb.x;
      Bs[(lcol + 1) * LD + row] = vb.y;
      Bs[(lcol + 2) * LD + row] = vb.z;
      Bs[(lcol + 3) * LD + row] = vb.w;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      const float4 av = *reinterpret_cast<const float4*>(As + kk * LD + ty * 4);
      const float4 bv = *reinterpret_cast<const float4*>(Bs + kk * LD + tx * 4);
      const float ar[4] = {av.x, av.y, av.z, av.w};
      const float br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
    *reinterpret_cast<float4*>(S + (ty * 4 + i) * (BR + 4) + tx * 4) =
        make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
}

// Score tile S[BQ][BR+4] (float) with bf16 WMMA, fp32 accumulation.
__device__ __forceinline__ void score_tile_bf16(const FusedArgs& a, int64_t q0, int64_t r0,
                                                float* S, unsigned char* U) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int BQ = TileCfg<kModeBF16>::BQ, BR = TileCfg<kModeBF16>::BR, LD = kBK + 8;
  const __nv_bfloat16* Q = static_cast<const __nv_bfloat16*>(a.qbuf);
  const __nv_bfloat16* R = static_cast<const __nv_bfloat16*>(a.rbuf);
  __nv_bfloat16* As = reinterpret_cast<__nv_bfloat16*>(U);  // [BQ][LD]
  __nv_bfloat16* Bs = As + BQ * LD;                          // [BR][LD]
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wq = warp >> 2, wr = warp & 3;  // warp tile: rows wq*32.., cols wr*32..
  const int lrow = tid >> 2, lcol = (tid & 3) * 8;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < a.dpad; k0 += kBK) {
    *reinterpret_cast<uint4*>(As + lrow * LD + lcol) =
        *reinterpret_cast<const uint4*>(Q + (q0 + lrow) * a.dpad + k0 + lcol);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = lrow + 64 * h;
      *reinterpret_cast<uint4*>(Bs + row * LD + lcol) =
          *reinterpret_cast<const uint4*>(R + (r0 + row) * a.dpad + k0 + lcol);
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wq * 32 + i * 16) * LD + ks, LD);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (wr * 32 + j * 16) * LD + ks, LD);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(S + (wq * 32 + i * 16) * (BR + 4) + wr * 32 + j * 16, acc[i][j],
                              BR + 4, wmma::mem_row_major);
#endif
}

// Score tile S[BQ][BR+4] (int32 dot products of the int8 codes) with s8 WMMA.
__device__ __forceinline__ void score_tile_i8(const FusedArgs& a, int64_t q0, int64_t r0,
                                              int* S, unsigned char* U) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int BQ = TileCfg<kModeI8>::BQ, BR = TileCfg<kModeI8>::BR;
  const int8_t* Q = static_cast<const int8_t*>(a.qbuf);
  const int8_t* R = static_cast<const int8_t*>(a.rbuf);
  // 16-column slabs so every fragment starts 32-byte aligned: As[2][BQ][16], Bs[2][BR][16].
  signed char* As = reinterpret_cast<signed char*>(U);
  signed char* Bs = As + 2 * BQ * 16;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wq = warp >> 2, wr = warp & 3;
  const int lrow = tid >> 1, lh = tid & 1;
  wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0);

  for (int64_t k0 = 0; k0 < a.dpad; k0 += kBK) {
    if (lrow < BQ)
      *reinterpret_cast<uint4*>(As + (lh * BQ + lrow) * 16) =
          *reinterpret_cast<const uint4*>(Q + (q0 + lrow) * a.dpad + k0 + lh * 16);
    *reinterpret_cast<uint4*>(Bs + (lh * BR + lrow) * 16) =
        *reinterpret_cast<const uint4*>(R + (r0 + lrow) * a.dpad + k0 + lh * 16);
    __syncthreads();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(fa[i], As + (h * BQ + wq * 32 + i * 16) * 16, 16);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(fb[j], Bs + (h * BR + wr * 32 + j * 16) * 16, 16);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(S + (wq * 32 + i * 16) * (BR + 4) + wr * 32 + j * 16, acc[i][j],
                              BR + 4, wmma::mem_row_major);
#endif
}

// Sorts the lists of the CTA's query rows that need it and cuts them to k. `final_pass`:
// every non-empty list (the merge kernel reads sorted lists of <= k keys); otherwise the lists
// that could overflow when the next tile appends up to BR keys. Block-wide.
template <int BQ, int BR>
__device__ void flush_rows(const FusedArgs& a, int64_t slice, int64_t q0, int* s_n,
                           uint64_t* s_thr, uint64_t* sbuf, bool final_pass) {
  for (int row = 0; row < BQ; ++row) {
    const int64_t q = q0 + row;
    if (q >= a.nq) break;
    const int n = s_n[row];
    const bool need = final_pass ? n > 0 : n + BR > a.cap;
    if (!need) continue;
    uint64_t* list = a.lists + (slice * a.nq + q) * a.cap;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sbuf[i] = list[i];
    __syncthreads();
    block_sort_prefix_desc(sbuf, n);
    const int kept = n < a.k ? n : static_cast<int>(a.k);
    for (int i = threadIdx.x; i < kept; i += blockDim.x) list[i] = sbuf[i];
    if (threadIdx.x == 0) {
      s_n[row] = kept;
      if (n >= a.k) s_thr[row] = sbuf[a.k - 1];
    }
    __syncthreads();
  }
}

template <int MODE>
__global__ void __launch_bounds__(kThreads) fused_topk_kernel(const FusedArgs a) {
  constexpr int BQ = TileCfg<MODE>::BQ, BR = TileCfg<MODE>::BR, LDS = BR + 4;
  extern __shared__ __align__(128) unsigned char smem[];
  float* S = reinterpret_cast<float*>(smem);                         // score tile
  unsigned char* U = smem + score_tile_bytes<MODE>();                // K tiles | sort buffer
  uint64_t* sbuf = reinterpret_cast<uint64_t*>(U);
  uint64_t* s_thr = reinterpret_cast<uint64_t*>(U + a.union_bytes);  // [BQ]
  int* s_n = reinterpret_cast<int*>(s_thr + BQ);                     // [BQ]
  float* s_sq = reinterpret_cast<float*>(s_n + BQ);                  // [BQ]
  float* s_sr = s_sq + BQ;                                           // [BR]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * BQ;
  const int64_t slice = blockIdx.y;
  const int64_t r_beg = slice * a.slice_rows;
  const int64_t r_end = min(r_beg + a.slice_rows, a.rows);
  if (r_beg >= r_end && !a.final_pass) return;

  for (int i = tid; i < BQ; i += kThreads) {
    const int64_t q = q0 + i;
    const bool valid = q < a.nq;
    s_n[i] = valid ? a.cnt[slice * a.nq + q] : 0;
    s_thr[i] = valid ? a.thr[slice * a.nq + q] : 0ull;
    s_sq[i] = MODE == kModeI8 ? a.qscale[q] : 0.0f;  // qscale has nq_pad entries
  }
  __syncthreads();

  for (int64_t r0 = r_beg; r0 < r_end; r0 += BR) {
    if (MODE == kModeI8 && tid < BR) s_sr[tid] = a.rscale[r0 + tid];
    if (MODE == kModeF32) score_tile_f32(a, q0, r0, S, U);
    if (MODE == kModeBF16) score_tile_bf16(a, q0, r0, S, U);
    if (MODE == kModeI8) score_tile_i8(a, q0, r0, reinterpret_cast<int*>(S), U);
    __syncthreads();

    // Selection epilogue: warp w owns rows w, w+8, ...; survivors are appended in column order.
    for (int row = warp; row < BQ; row += kThreads / 32) {
      const int64_t q = q0 + row;
      if (q >= a.nq) break;
      const uint64_t t = s_thr[row];
      int n = s_n[row];
      uint64_t* list = a.lists + (slice * a.nq + q) * a.cap;
      const float sq = s_sq[row];
#pragma unroll
      for (int c = lane; c < BR; c += 32) {
        const int64_t rr = r0 + c;
        float v;
        if (MODE == kModeI8)
          v = (static_cast<float>(reinterpret_cast<const int*>(S)[row * LDS + c]) * sq) * s_sr[c];
        else
          v = S[row * LDS + c];
        const uint64_t key = make_key(v, static_cast<uint32_t>(a.chunk_base + rr));
        const bool keep = rr < r_end && key > t;
        const unsigned m = __ballot_sync(0xffffffffu, keep);
        if (keep) list[n + __popc(m & ((1u << lane) - 1u))] = key;
        n += __popc(m);
      }
      if (lane == 0) s_n[row] = n;
    }
    __syncthreads();
    flush_rows<BQ, BR>(a, slice, q0, s_n, s_thr, sbuf, false);
  }
  if (a.final_pass) flush_rows<BQ, BR>(a, slice, q0, s_n, s_thr, sbuf, true);

  __syncthreads();
  for (int i = tid; i < BQ; i += kThreads) {
    const int64_t q = q0 + i;
    if (q < a.nq) {
      a.cnt[slice * a.nq + q] = s_n[i];
      a.thr[slice * a.nq + q] = s_thr[i];
    }
  }
}

// ------------------------------------------------------------------------------------------
// final merge over slices

struct MergeArgs {
  const uint64_t* lists;
  const int* cnt;
  int64_t nq, k, cap, splits, merge_cap;
  float* out_scores;
  int64_t* out_idx;
  // error bound (candidates only; out_err == nullptr for the exact path)
  float* out_err;
  const float* qnorm;
  const float* qdiff;
  const unsigned int* rstats;
  float eta;         // relative slack for fp32 rounding of norms, scales and the bound itself
  float acc_slack;   // accumulation slack, relative to ||q_hat|| * max ||r_hat||
};

__global__ void __launch_bounds__(kMergeThreads) merge_topk_kernel(const MergeArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* buf = reinterpret_cast<uint64_t*>(smem);
  const int64_t q = blockIdx.x;
  const int cap = static_cast<int>(a.merge_cap);
  const int k = static_cast<int>(a.k);
  int pos = 0;
  for (int64_t s = 0; s < a.splits; ++s) {
    const int n = a.cnt[s * a.nq + q];
    if (pos + n > cap) {
      block_sort_prefix_desc(buf, pos);
      pos = pos < k ? pos : k;
    }
    const uint64_t* list = a.lists + (s * a.nq + q) * a.cap;
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[pos + i] = list[i];
    pos += n;
  }
  __syncthreads();
  block_sort_prefix_desc(buf, pos);
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const uint64_t key = j < pos ? buf[j] : 0ull;
    a.out_scores[q * a.k + j] = key ? key_score(key) : -INFINITY;
    a.out_idx[q * a.k + j] = key ? key_index(key) : -1;
  }
  if (a.out_err != nullptr && threadIdx.x == 0) {
    // |<q_hat, r_hat> - <q, r>| <= ||q_hat|| ||r_hat - r|| + ||q_hat - q|| ||r||
    //                            + accumulation error <= slack * ||q_hat|| ||r_hat||,
    // with max_r ||r_hat - r|| <= D + eta (R + D) (fp32 normalization error) and every
    // computed norm inflated by (1 + eta).
    const float Q = a.qnorm[q], Qd = a.qdiff[q];
    const float R = __uint_as_float(a.rstats[0]), D = __uint_as_float(a.rstats[1]);
    const float e = a.eta;
    const float bound = Q * (D + e * (R + D)) + Qd * R + a.acc_slack * Q * (R + D);
    a.out_err[q] = bound * (1.0f + e) * (1.0f + e);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace memlens
