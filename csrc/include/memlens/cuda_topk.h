// Exact cosine / inner-product top-k search on CUDA GPUs: the plain C++ API of the CUDA core.
//
// Same conventions as the CPU core (memlens/topk.h), with device pointers and a stream:
// - `queries` is float32, row-major contiguous (nq x d), on the device, already unit-normalized
//   when cosine similarity is wanted.
// - `refs` is read in place with its strides (in elements) and dtype; when `normalize_refs` is
//   true each row r is scored as r / max(||r||_2, 1e-12).
// - Output rows are sorted by descending score; equal scores are ordered by the lower reference
//   index. Indices are int64 reference row numbers in [0, refs.rows).
// - The caller provides a device workspace of at least workspace_bytes(...) bytes, 256-byte
//   aligned. It is O(nq * k * splits + tile): the nq x nr score matrix is never formed. For
//   nq <= 4096 and d <= 1024 it stays below 256 MB.
// - Work is enqueued on `stream` (nullptr: the legacy default stream) and is asynchronous; the
//   calls return once it is enqueued. Bad arguments throw std::invalid_argument (before anything
//   is enqueued); CUDA failures throw std::runtime_error naming the CUDA error.
//
// This header needs no CUDA header: cudaStream_t is `CUstream_st*`.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "memlens/types.h"

struct CUstream_st;

namespace memlens {
namespace cuda {

using Stream = CUstream_st*;  // == cudaStream_t

// Largest k (or kc) the GPU kernels select in one call (bounded by shared memory per block).
constexpr int64_t kMaxK = 8192;
// Reference rows per call are limited to 2^31 - 1 (indices are packed in 32 bits on the device).
constexpr int64_t kMaxRows = 2147483647LL;

// Bytes of device workspace needed by topk_fp32 (precision fp32) or topk_candidates
// (precision bf16 / int8) for these sizes. Depends only on its arguments.
size_t workspace_bytes(int64_t nq, int64_t nr, int64_t d, int64_t k, Precision precision);

// Exact fp32 top-k: scores[q*k + j], indices[q*k + j] for j < k. Requires 1 <= k <= refs.rows.
void topk_fp32(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
               int64_t k, float* scores, int64_t* indices, void* workspace,
               size_t workspace_bytes, Stream stream);

// Candidate stage in reduced precision: bf16 (tensor cores, fp32 accumulation) or int8 (per-row
// symmetric scale max|x|/127, s8 x s8 -> s32 tensor cores). Writes the kc best references by
// approximate score (same ordering rules) and, per query, err[q] such that
// |approx(q, r) - exact(q, r)| <= err[q] for EVERY reference row r, where exact is the
// real-arithmetic dot product of the query and the (normalized) reference row.
void topk_candidates(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
                     Precision precision, int64_t kc, float* approx, int64_t* indices, float* err,
                     void* workspace, size_t workspace_bytes, Stream stream);

// How a call of these sizes is executed (for benchmarks and diagnostics).
struct PlanInfo {
  int64_t query_tile = 0;     // queries per CTA
  int64_t ref_tile = 0;       // reference rows per CTA tile
  int64_t dpad = 0;           // d zero-padded to the K chunk
  int64_t splits = 0;         // reference slices per chunk (grid.y)
  int64_t chunk_rows = 0;     // reference rows converted per pre-pass
  int64_t slice_rows = 0;     // rows of a chunk per CTA
  int64_t list_capacity = 0;  // keys per (slice, query) list before a sort
  size_t fused_smem = 0;      // dynamic shared memory of the fused kernel (bytes)
  size_t merge_smem = 0;      // dynamic shared memory of the merge kernel (bytes)
  size_t workspace = 0;       // == workspace_bytes(...)
};
PlanInfo plan_info(int64_t nq, int64_t nr, int64_t d, int64_t k, Precision precision);

// Number of visible CUDA devices (0 when there is no driver or no device).
int device_count();
// Name of a device, e.g. "NVIDIA H100 80GB HBM3". Throws std::invalid_argument on a bad index.
std::string device_name(int device_index);

}  // namespace cuda
}  // namespace memlens
