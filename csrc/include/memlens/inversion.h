// The fused InvMM inversion step: the plain C++ API of the CPU core (the CUDA entry points in
// cuda_inversion.h take the same structs). Specification: python/memlens/reference/inversion.py.
//
// N images are inverted together, B noise samples per image and step, D elements per image.
// Per image i: mu, logvar and the four Adam moments, float32 (N, D), updated in place; x0
// float32 (N, D). Per sample (i, b): a = sqrt(abar_t), s = sqrt(1 - abar_t), float32 (N, B).
// Model-facing tensors (x_t, eps_hat, the model's gradient g_model) are (N, B, D) in the model's
// dtype: float32, float16 or bfloat16. Everything is contiguous, row-major.
//
// One optimisation step is two passes outside the model:
//   inversion_loss   : eps_hat -> per-sample squared-error sums and g_eps = dp/d eps_hat
//   inversion_update : g_eps + g_model -> gradients of mu, logvar (+ KL), Adam in place, and
//                      (optionally) the next step's x_t from the new parameters
// plus inversion_sample once for the first x_t. The noise is never stored: every pass that
// needs eps regenerates it from (seed, step, element) with the counter-based generator.
#pragma once
#include <cstdint>

#include "memlens/types.h"

namespace memlens {

struct InvShape {
  int64_t n = 0, b = 0, d = 0;
};

// Noise stream: the counter-based generator's key and the noise step (one per x_t drawn).
struct InvNoise {
  uint64_t seed = 0;
  uint32_t step = 0;
};

struct InvAdam {
  float lr = 0.1f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  int64_t t = 1;  // the Adam step being taken, 1-based (bias corrections)
};

struct InvParams {  // all float32 (N, D)
  float* mu = nullptr;
  float* logvar = nullptr;
  float* m_mu = nullptr;
  float* v_mu = nullptr;
  float* m_lv = nullptr;
  float* v_lv = nullptr;
};

// x_t[i, b, j] = a[i, b] x0[i, j] + s[i, b] (mu[i, j] + eps exp(logvar[i, j] / 2)).
void inversion_sample(const float* mu, const float* logvar, const float* x0, const float* a,
                      const float* s, InvShape shape, InvNoise noise, void* xt, DType xt_dtype,
                      int num_threads, SimdLevel simd);

// e = (x_t - s eps_hat) / a - x0; sse[i*B + b] = sum_j e^2 (float64); g_eps = -2 s e / (a B D)
// (float32, (N, B, D)). x_t and eps_hat share `dtype`.
void inversion_loss(const void* xt, const void* eps_hat, DType dtype, const float* x0,
                    const float* a, const float* s, InvShape shape, double* sse, float* g_eps,
                    int num_threads, SimdLevel simd);

// What inversion_update does after the gradients.
struct InvUpdateOut {
  // Adam mode: the step is taken in place on `params`. Gradient mode (grad_mu != nullptr): the
  // gradients are written to grad_mu / grad_logvar (N, D) and nothing else changes (the
  // backward of the differentiable sample).
  float* grad_mu = nullptr;
  float* grad_logvar = nullptr;
  // Optional: the next step's x_t (N, B, D) in `xt_dtype`, drawn with `next_noise` and the new
  // parameters, with coefficients a_next, s_next (N, B). nullptr: not drawn.
  void* xt_next = nullptr;
  DType xt_dtype = DType::f32;
  const float* a_next = nullptr;
  const float* s_next = nullptr;
  InvNoise next_noise;
};

// Gradient of sample b through n: gn = s g_model - g_eps (g_eps may be nullptr: 0; g_model in
// `gm_dtype`). dmu = sum_b gn + w mu / D, dlogvar = sum_b gn eps sigma / 2 + w (exp(logvar) - 1)
// / (2 D) (w: float32 (N,), nullptr: no KL term). Throws std::invalid_argument naming the
// argument on negative sizes, null pointers or bad Adam settings.
void inversion_update(const InvParams& params, const float* x0, const float* g_eps,
                      const void* g_model, DType gm_dtype, const float* s, const float* w,
                      InvShape shape, InvNoise noise, const InvAdam& adam, const InvUpdateOut& out,
                      int num_threads, SimdLevel simd);

}  // namespace memlens
