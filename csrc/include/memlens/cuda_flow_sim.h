// Flow-field similarity statistics on CUDA GPUs: the plain C++ API of the CUDA core.
//
// One streaming pass over a generated flow field `gen` (T, H, W, 2) and N candidate fields
// `cands` (N, T, H, W, 2) that writes, in float64 (definitions: python/memlens/reference/flow.py,
// the executable specification):
//   pair[(n*T + t)*4 + k]       COUNT, COS_SUM, RATIO_SUM, COS_RATIO_SUM of (gen[t], cands[n, t])
//   gen_field[t*8 + k]          MAG_SUM, SQ_SUM, SU_X, SXU_X, SYU_X, SU_Y, SXU_Y, SYU_Y of gen[t]
//   cand_field[(n*T + t)*8 + k] the same of cands[n, t]
// - Fields are float32 or float16 (DType::f32 / DType::f16), read in place with element strides
//   (any layout; packed (dx, dy) pairs with packed rows take a vectorized path).
// - `gen_affine` (T x 6) / `cand_affine` (N x T x 6), contiguous float64 device arrays or
//   nullptr: affine flows subtracted before the PAIR statistics (FIELD statistics always
//   describe the fields as given).
// - The motion mask |v| > mu_min is bit-identical to the float64 reference without affine
//   (and up to float64 rounding of the residual with it); sums are float32 per thread over at
//   most 32 pixels, then float64: error <= ~4e-6 of the sum of |terms| of a statistic.
// - The caller provides a device workspace of at least flow_sim_workspace_bytes(...) bytes,
//   256-byte aligned (0 bytes when a frame fits one chunk). Results are deterministic: the plan
//   depends only on (N, T, H, W) and every reduction has a fixed order.
// - Work is enqueued on `stream` (nullptr: the legacy default stream) and is asynchronous.
//   Bad arguments throw std::invalid_argument before anything is enqueued; CUDA failures
//   throw std::runtime_error naming the CUDA error.
#pragma once
#include <cstddef>
#include <cstdint>

#include "memlens/types.h"

struct CUstream_st;

namespace memlens {
namespace cuda {

using Stream = CUstream_st*;  // == cudaStream_t (same alias as in cuda_topk.h)

// A flow field on the device: element strides of the n (candidates; ignored for gen), t, h, w
// and c (dx -> dy) axes.
struct FlowField {
  const void* data = nullptr;
  int64_t stride_n = 0;
  int64_t stride_t = 0;
  int64_t stride_h = 0;
  int64_t stride_w = 0;
  int64_t stride_c = 1;
  DType dtype = DType::f32;
};

// How a call of these sizes is executed (for benchmarks and diagnostics).
struct FlowSimPlan {
  int64_t cands_per_block = 0;  // candidates sharing one gen tile in a CTA
  int64_t threads = 0;          // threads per CTA
  int64_t chunk_pixels = 0;     // pixels of one frame per CTA
  int64_t chunks = 0;           // CTAs per (candidate block, frame)
  int64_t blocks = 0;           // grid size of the main kernel
  size_t workspace = 0;         // == flow_sim_workspace_bytes(...)
};
// `affine`: whether gen_affine or cand_affine will be given (it changes the CTA shape).
FlowSimPlan flow_sim_plan(int64_t n, int64_t t, int64_t h, int64_t w, bool affine);

// Bytes of device workspace needed for these sizes (float64 per-chunk partial sums).
size_t flow_sim_workspace_bytes(int64_t n, int64_t t, int64_t h, int64_t w, bool affine);

void flow_similarity(const FlowField& gen, const FlowField& cands, int64_t n, int64_t t,
                     int64_t h, int64_t w, double mu_min, const double* gen_affine,
                     const double* cand_affine, double* pair, double* gen_field,
                     double* cand_field, void* workspace, size_t workspace_bytes, Stream stream);

}  // namespace cuda
}  // namespace memlens
