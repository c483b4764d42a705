// Flow-similarity kernel for baseline x86-64: every term in float64, the PAIR terms through the
// same exact_pair() the SIMD kernels fall back to. It defines the behaviour the SIMD levels
// reproduce (to float32 rounding of the per-pixel terms) and is the fallback on old CPUs.
#include "flow_sim_kernel.h"

namespace memlens::cpu {
namespace {

struct Scalar {
  static void norm_pd(const double* s, double* norm, double* inv, int64_t n) {
    for (int64_t k = 0; k < n; ++k) norm[k] = std::sqrt(s[k]), inv[k] = 1.0 / norm[k];
  }
  static int lane_pixel(int l) { return l; }
  static void permute16(const float* src, float* dst) { std::memcpy(dst, src, 16 * sizeof(float)); }
  template <class E, bool kAffine, int kEps>
  static void row(const RowArgs& a) {
    const E* c = static_cast<const E*>(a.cand);
    double* acc = a.acc;
    const double* xd = a.job->xd;
    double f[6] = {};  // |u|, |u|^2, u_x, x u_x, u_y, x u_y of this row
    for (int64_t j = 0; j < a.w; ++j) {
      double rx, ry;
      if constexpr (sizeof(E) == 2) {
        rx = half_to_float(c[2 * j]);
        ry = half_to_float(c[2 * j + 1]);
      } else {
        rx = c[2 * j];
        ry = c[2 * j + 1];
      }
      const double sq = rx * rx + ry * ry, x = xd[j];
      f[0] += std::sqrt(sq);
      f[1] += sq;
      f[2] += rx;
      f[3] += x * rx;
      f[4] += ry;
      f[5] += x * ry;
      if (a.gbits[j / 16] >> (j % 16) & 1) exact_pair(*a.job, a.n, a.t, a.i, j, rx, ry, acc);
    }
    acc[(kPairStats + kMagSum) * kMaxLanes] += f[0];
    acc[(kPairStats + kSqSum) * kMaxLanes] += f[1];
    acc[(kPairStats + kSuX) * kMaxLanes] += f[2];
    acc[(kPairStats + kSxuX) * kMaxLanes] += f[3];
    acc[(kPairStats + kSyuX) * kMaxLanes] += a.y * f[2];
    acc[(kPairStats + kSuY) * kMaxLanes] += f[4];
    acc[(kPairStats + kSxuY) * kMaxLanes] += f[5];
    acc[(kPairStats + kSyuY) * kMaxLanes] += a.y * f[4];
  }
};

}  // namespace

void flow_task_scalar(const FlowJob& job, const FlowTask& task, const FlowScratch& s) { run_task<Scalar>(job, task, s); }

}  // namespace memlens::cpu
