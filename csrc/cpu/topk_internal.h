// Internal interface between the portable top-k driver (topk.cpp) and the per-ISA scan
// kernels (topk_scan_<isa>.cpp). Nothing here is visible to the Python binding.
//
// Division of labour: the driver owns threading, query blocking, memory budgets, the
// reduced-precision quantization of the queries, the final merge/sort and the error bound;
// a scan function streams one thread's slice of the references against one thread's
// queries and feeds the survivors of a per-query threshold into that query's Reservoir.
// Every std:: algorithm lives in the driver: ISA translation units must not instantiate
// library templates, whose COMDAT copies the linker could pick for the baseline build.
#pragma once
#include <cstdint>

#include "memlens/topk.h"

namespace memlens::cpu {

// One query's running top-k within one thread: an append buffer of `cap` > k candidates,
// cut back to the best k (compact) whenever it fills. `threshold` is the k-th best score
// kept so far, or NaN before the first compaction so that everything is accepted until k
// candidates exist. A thread visits references in increasing index order and compaction
// keeps the buffer in that order, so (1) a new score equal to the threshold never beats a
// kept one: survivors need score > threshold, and (2) among equal scores the earliest
// entries have the lowest indices, which makes compaction a selection on scores alone.
struct Reservoir {
  float* score;
  int64_t* index;
  int64_t size;
  float threshold;
};

// Keeps the best k of r (score descending, lower index first on ties) in index order and
// updates the threshold; scratch holds r.size floats. Defined in topk.cpp.
void reservoir_compact(Reservoir& r, int64_t k, float* scratch);

// Appends a candidate that passed the SIMD threshold test. NaN scores rank as -inf so that
// every ordering stays a strict weak order.
inline void reservoir_push(Reservoir& r, float score, int64_t index, int64_t k, int64_t cap, float* scratch) {
  if (r.size == cap) {
    reservoir_compact(r, k, scratch);
    if (!(score > r.threshold)) return;
  }
  r.score[r.size] = score == score ? score : -__builtin_inff();
  r.index[r.size] = index;
  ++r.size;
}

// Worst-case quantization statistics over the reference rows a scan packed, for the
// error bound of topk_candidates (r_hat: fp32 row as scored exactly, r_q: its dequantized
// reduced-precision version).
struct RefStats {
  double max_err2 = 0;   // max_r ||r_q - r_hat||^2
  double max_qnorm2 = 0; // max_r ||r_q||^2
  double max_norm2 = 0;  // max_r ||r_hat||^2
};

struct ScanTask {
  // Queries of this thread, nq x d row-major. fp32: as given; bf16: already rounded to bf16
  // values; int8: the integer codes, with per-query dequantization scales in qscale.
  const float* q;
  const float* qscale;
  int64_t nq;
  const RowMatrix* refs;
  int64_t r_begin, r_end;  // reference rows [r_begin, r_end), visited in increasing order
  bool normalize;
  Precision precision;
  int64_t k, cap;
  Reservoir* res;          // nq reservoirs, one per query
  float* scratch;          // cap floats for reservoir_compact
  RefStats stats;          // out (bf16/int8 only)
};

// Re-ranking visits the (query, candidate) positions p = q * kc + j in order of their
// reference index (order[begin, end)), so each reference row is loaded and normalized once
// per run of equal indices instead of once per candidate.
struct RerankTask {
  const float* q;
  const RowMatrix* refs;
  bool normalize;
  const int64_t* order;     // candidate positions p (row p / kc of the queries), by reference
  const int64_t* order_ref;  // the reference of each: indices[order[o]], read in sequence
  int64_t begin, end;
  int64_t kc;
  float* scores;
};

void scan_scalar(ScanTask& t);
void rerank_scalar(const RerankTask& t);
#if MEMLENS_HAVE_AVX2
void scan_avx2(ScanTask& t);
void rerank_avx2(const RerankTask& t);
#endif
#if MEMLENS_HAVE_AVX512
void scan_avx512(ScanTask& t);
void rerank_avx512(const RerankTask& t);
#endif
#if MEMLENS_HAVE_AVX512BF16
// Reduced-precision kernels only; fp32 at this level runs scan_avx512.
void scan_avx512bf16(ScanTask& t);
#endif
#if MEMLENS_HAVE_AMX
// bf16 and int8 through AMX tiles; fp32 at this level runs scan_avx512.
void scan_amx(ScanTask& t);
#endif

}  // namespace memlens::cpu
