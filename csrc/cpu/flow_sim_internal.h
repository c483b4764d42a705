// Internal interface between the flow-similarity driver (flow_sim.cpp) and its per-ISA kernels
// (flow_sim_<isa>.cpp). Nothing here is visible to the Python binding.
//
// Division of labour: the driver validates, chooses the blocking, owns every allocation and the
// OpenMP team, and reduces the partial sums in a fixed order; a kernel runs one task: it prepares
// one block of gen rows of one frame (residual flow, norms and mask, once) and streams a range of
// candidates past it, writing one partial-sum record per candidate.
// As in topk_internal.h, ISA translation units instantiate no std:: templates (their COMDAT copies
// could be picked by the linker for the baseline build).
#pragma once
#include <cstdint>

#include "memlens/flow_sim.h"

namespace memlens::cpu {

// Partial sums of one (candidate, frame, row block): the 4 PAIR then the 8 FIELD statistics.
constexpr int kPartialStats = kPairStats + kFieldStats;
// Widest SIMD vector in float lanes; lane-wise double accumulators are sized for it.
constexpr int kMaxLanes = 16;
// Row pixels are padded to a multiple of this in every scratch buffer (whole-vector loads).
constexpr int64_t kPadPixels = 16;
// See FlowJob::eps_mode.
enum EpsMode : int { kExactEps = 0, kFirstOrder = 1, kNoEps = 2 };
constexpr double kSmallMu = 1.0 / 64;
constexpr double kLargeMu = 0.29;
// Prepared gen data of one row (see RowArgs::g in flow_sim_kernel.h): per block of 16 pixels,
// kGenPlanes runs of 16 floats; after the blocks, the mask as one uint16 per block, padded to
// 64 bytes.
enum GenPlane : int { kGx = 0, kGy = 1, kGm = 2, kIg = 3, kEig = 4 };
constexpr int64_t kGenPlanes = 5;
// float64 planes of one gen row while it is prepared (see prepare_gen).
constexpr int64_t kRowPlanes = 9;
inline int64_t gen_row_floats(int64_t wpad) {
  const int64_t bits = (wpad / 16 * 2 + 3) / 4;  // uint16 per 16 pixels, in floats
  return kGenPlanes * wpad + (bits + 15) / 16 * 16;
}

struct FlowJob {
  FlowArray gen, cands;
  FlowShape shape;
  double mu_min;
  const double* gen_affine;   // T x 6 or nullptr
  const double* cand_affine;  // N x T x 6 or nullptr
  int64_t rows_per_block, blocks;  // row blocks per frame: ceil(H / rows_per_block)
  int64_t wpad;                    // W rounded up to kPadPixels
  const double* xd;                // wpad grid x_j (float64, as the reference computes them; 0-padded)
  const double* yd;                // H grid y_i
  // The float32 mask test (see flow_sim.cpp, kBand): |r|^2 > hi is in the mask, |r|^2 < lo is
  // not, and pixels in [lo, hi], where float32 rounding could disagree with the float64
  // reference, are recomputed in float64.
  float lo, hi;
  // The largest float64 s with sqrt(s) <= mu_min (correctly rounded, as the reference computes
  // |g|): gen's mask |g| > mu_min is exactly |g|^2 > mask_sq, whatever rounding |g| itself gets.
  double mask_sq;
  // How the SIMD kernels treat the 1e-8 of c = g.r / (|g| |r| + 1e-8), from mu_min (every pixel
  // they count has |g| |r| > mu_min^2), with e = 1e-8 / (|g| |r|):
  //   kExactEps  (mu_min < kSmallMu): a division. Exact zero vectors are also kept out of the
  //              float64 fallback there (the band may reach down to 0, and |0| > mu_min is false).
  //   kFirstOrder (e < 4.1e-5): c = (g.r / (|g| |r|)) (1 - e), exact to e^2 < 2e-9.
  //   kNoEps     (mu_min >= kLargeMu, e < 1.2e-7, i.e. below float32 resolution): c = g.r / (|g| |r|).
  int eps_mode;
  double* partial;      // [((t * blocks + b) * N + n) * kPartialStats]
  double* gen_partial;  // [(t * blocks + b) * kFieldStats]
};

struct FlowTask {
  int64_t t, b;    // frame, row block
  int64_t n0, n1;  // candidates [n0, n1); the task with n0 == 0 also writes gen_partial
};

// Per-thread scratch memory (64-byte aligned), owned by the driver.
struct FlowScratch {
  float* gen;    // rows_per_block * gen_row_floats(wpad) floats
  float* row;    // kGenPlanes * wpad floats: a gathered candidate row (x, y), or gen planes
  double* rowd;  // kRowPlanes * wpad doubles: one gen row as float64, its residual and their norms
  double* acc;   // kPartialStats * kMaxLanes doubles: lane-wise sums of one candidate
};

using FlowKernel = void (*)(const FlowJob&, const FlowTask&, const FlowScratch&);

void flow_task_scalar(const FlowJob& job, const FlowTask& task, const FlowScratch& s);
#if MEMLENS_HAVE_AVX2
void flow_task_avx2(const FlowJob& job, const FlowTask& task, const FlowScratch& s);
#endif
#if MEMLENS_HAVE_AVX512
void flow_task_avx512(const FlowJob& job, const FlowTask& task, const FlowScratch& s);
#endif

}  // namespace memlens::cpu
