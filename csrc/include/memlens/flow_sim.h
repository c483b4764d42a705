// Flow-field similarity statistics: the plain C++ API of the CPU core.
//
// One generated flow field `gen` (T, H, W, 2) and N candidate fields `cands` (N, T, H, W, 2)
// are reduced, in one streaming pass, to the sufficient statistics of OFS-k, its magnitude-aware
// variant, static detection and the global-affine (camera motion) filter. The exact definitions
// are those of the float64 torch reference, python/memlens/reference/flow.py (the specification):
//
//   pair[(n*T + t)*4 + s]        s = COUNT, COS_SUM, RATIO_SUM, COS_RATIO_SUM   of (gen[t], cands[n, t])
//   gen_field[t*8 + s]           s = MAG_SUM, SQ_SUM, SU_X, SXU_X, SYU_X, SU_Y, SXU_Y, SYU_Y of gen[t]
//   cand_field[(n*T + t)*8 + s]  the same FIELD statistics of cands[n, t]
//
// Conventions:
// - Fields are read in place: float32 or float16 elements, arbitrary element strides (signed, in
//   elements, zero allowed) for every dimension. Rows whose (W, 2) elements are contiguous take
//   the fast path; any other layout is gathered one row at a time.
// - The optional affine flows gen_affine (T x 6) and cand_affine (N x T x 6), float64 row-major,
//   are subtracted (on the normalized grid x_j = (2j+1)/W - 1, y_i = (2i+1)/H - 1) before the
//   PAIR statistics only; nullptr means none.
// - Outputs are float64, row-major, fully overwritten. The results do not depend on the thread
//   count: every (candidate, frame, row block) partial sum is reduced in a fixed order.
// - Accuracy (SIMD levels; the scalar level computes everything in float64): per-pixel terms in
//   float32 (~2 ulp), summed in float32 over at most 16 terms per lane, then in float64, so each
//   sum is within ~1e-6 of the scale of its terms (measured ~1e-8 on 256 x 256 fields; tested in
//   tests/test_flow_sim.py). The valid-pixel mask (|g| > mu_min and |r| > mu_min) is decided
//   exactly as the float64 reference decides it: gen's in float64 once per frame, and every
//   candidate pixel whose float32 |r|^2 lies within 2^-20 (relative) of mu_min^2, or that could
//   underflow when mu_min is ~0, is recomputed in float64. The 1e-8 of the cosine is honoured
//   (divided, or to first order; below float32 resolution when mu_min >= 0.29 and then dropped).
//   Domain: |u| < ~1e19 px (float32 squares); in the candidates' FIELD |u| and |u|^2 sums,
//   vectors shorter than ~1e-19 px (whose float32 squares underflow) count as 0.
// - Performance (see flow_sim.cpp and flow_sim_avx512.cpp): one pass over the candidates, gen
//   prepared once per frame block, OpenMP over (frame, block, candidate range) tasks.
#pragma once
#include <cstdint>

#include "memlens/types.h"

namespace memlens {

// PAIR and FIELD statistic positions (the order of memlens.reference.flow).
enum PairStat : int { kCount = 0, kCosSum = 1, kRatioSum = 2, kCosRatioSum = 3, kPairStats = 4 };
enum FieldStat : int {
  kMagSum = 0,
  kSqSum = 1,
  kSuX = 2,
  kSxuX = 3,
  kSyuX = 4,
  kSuY = 5,
  kSxuY = 6,
  kSyuY = 7,
  kFieldStats = 8
};

// A (N,) T, H, W, 2 flow array read in place. Strides are in elements; `n` is unused for gen.
struct FlowArray {
  const void* data = nullptr;
  DType dtype = DType::f32;  // f32 or f16
  int64_t stride_n = 0, stride_t = 0, stride_h = 0, stride_w = 2, stride_c = 1;
};

struct FlowShape {
  int64_t n = 0, t = 0, h = 0, w = 0;
};

struct FlowOptions {
  int num_threads = 0;              // 0: OpenMP's default
  SimdLevel simd = SimdLevel::scalar;  // resolved by the caller (detect_simd / MEMLENS_SIMD)
  // Pixels of gen per block: all N candidates stream past one block of prepared gen rows
  // (~20 bytes a pixel) while it stays in cache. 0: the default (a third of L2 where L2 holds
  // at least 2 MiB, else 65536 pixels; see flow_sim.cpp).
  int64_t block_pixels = 0;
};

// Computes every statistic above. Throws std::invalid_argument (naming the argument) on a
// negative size, a null pointer with a non-empty shape, an unsupported dtype, a negative or
// non-finite mu_min, or a SIMD level this build/CPU cannot run.
void flow_similarity(const FlowArray& gen, const FlowArray& cands, const FlowShape& shape,
                     double mu_min, const double* gen_affine, const double* cand_affine,
                     double* pair, double* gen_field, double* cand_field, const FlowOptions& opt);

}  // namespace memlens
