// Exact cosine / inner-product top-k search: the plain C++ API of the CPU core.
//
// Conventions shared by every function here (and by the CUDA and Triton backends):
// - `queries` is float32, row-major contiguous (nq x d), and already unit-normalized
//   when cosine similarity is wanted (the Python layer does that, in chunks).
// - `refs` is read in place with its strides and dtype; when `normalize_refs` is true each
//   row r is scored as r / max(||r||_2, 1e-12) (the convention of torch's F.normalize).
// - Output rows are sorted by descending score; equal scores are ordered by the lower
//   reference index. Indices are reference row numbers in [0, refs.rows).
// - Workspace is O(nq * k * threads + tile): the nq x nr score matrix is never formed.
#pragma once
#include <cstdint>

#include "memlens/types.h"

namespace memlens {

struct CpuOptions {
  int num_threads = 0;                    // 0: OpenMP's default
  SimdLevel simd = SimdLevel::scalar;     // resolved by the caller (see cpu_features.h)
  // Memory for the per-query selection state of one pass over the references; more queries
  // than fit are searched in several passes. 0: the default (192 MiB).
  int64_t state_bytes = 0;
};

// Exact fp32 top-k: scores[q*k + j], indices[q*k + j] for j < k. Requires 1 <= k <= refs.rows.
void topk_fp32(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
               int64_t k, float* scores, int64_t* indices, const CpuOptions& opt);

// Candidate stage in reduced precision (bf16, or int8 with per-row scales).
// Writes the kc best references by approximate score (same ordering rules) and, per query,
// a bound err[q] such that |approx(q, r) - exact(q, r)| <= err[q] for EVERY reference row r,
// where exact(q, r) is the real-arithmetic dot product of the query and the (normalized)
// reference row. The Python layer re-ranks the candidates in fp32 and uses err to certify
// that the returned top-k is exact (retrying with a larger kc where it cannot).
void topk_candidates(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
                     Precision precision, int64_t kc, float* approx, int64_t* indices, float* err,
                     const CpuOptions& opt);

// Exact fp32 scores of given candidate rows: scores[q*kc + j] = <query q, ref idx[q*kc + j]>.
void rerank_fp32(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
                 const int64_t* indices, int64_t kc, float* scores, const CpuOptions& opt);

// CPU features: what this CPU supports (from CPUID) and what this build compiled.
SimdLevel detect_simd();
bool simd_compiled(SimdLevel level);
const char* simd_name(SimdLevel level);

}  // namespace memlens
