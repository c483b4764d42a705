// Internal interface between the inversion-step driver (inversion.cpp) and its per-ISA kernels
// (inversion_<isa>.cpp, all built from inversion_kernel.h). The driver validates and allocates;
// a kernel runs one whole pass with its own OpenMP loop. As in topk_internal.h, ISA translation
// units instantiate no std:: templates.
#pragma once
#include <cstdint>

#include "memlens/inversion.h"

namespace memlens::cpu {

// Elements of one image handled by one task (and the per-chunk float64 partial sums of the loss).
constexpr int64_t kInvChunk = 2048;

struct InvLossJob {
  const void* xt;
  const void* eps_hat;
  DType dtype;
  const float *x0, *a, *s;
  InvShape shape;
  double* partial;  // [(i*B + b) * chunks + c]
  float* g_eps;
};

struct InvKernels {
  void (*sample)(const float* mu, const float* logvar, const float* x0, const float* a,
                 const float* s, InvShape shape, InvNoise noise, void* xt, DType xt_dtype,
                 int num_threads);
  void (*loss)(const InvLossJob& job, int num_threads);
  void (*update)(const InvParams& p, const float* x0, const float* g_eps, const void* g_model,
                 DType gm_dtype, const float* s, const float* w, InvShape shape, InvNoise noise,
                 const InvAdam& adam, const InvUpdateOut& out, int num_threads);
};

extern const InvKernels inv_kernels_scalar;
#if MEMLENS_HAVE_AVX2
extern const InvKernels inv_kernels_avx2;
#endif
#if MEMLENS_HAVE_AVX512
extern const InvKernels inv_kernels_avx512;
#endif

}  // namespace memlens::cpu
