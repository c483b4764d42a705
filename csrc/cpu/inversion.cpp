// Driver of the fused inversion step on the CPU: validates the arguments (naming them), picks
// the kernel set of the requested SIMD level and reduces the loss's per-chunk partial sums in a
// fixed order (results do not depend on the thread count).
#include "memlens/inversion.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "inversion_internal.h"
#include "memlens/topk.h"  // simd_compiled, detect_simd

namespace memlens {
namespace {

const cpu::InvKernels& kernels(SimdLevel simd) {
  if (!simd_compiled(simd) || static_cast<int>(simd) > static_cast<int>(detect_simd()))
    throw std::invalid_argument("simd: level not available on this CPU/build");
  switch (simd) {
#if MEMLENS_HAVE_AVX512
    case SimdLevel::avx512:
    case SimdLevel::avx512_bf16:
    case SimdLevel::amx: return cpu::inv_kernels_avx512;
#endif
#if MEMLENS_HAVE_AVX2
    case SimdLevel::avx2: return cpu::inv_kernels_avx2;
#endif
    default: return cpu::inv_kernels_scalar;
  }
}

void check_shape(InvShape sh) {
  if (sh.n < 0) throw std::invalid_argument("n must be >= 0");
  if (sh.b < 0) throw std::invalid_argument("b must be >= 0");
  if (sh.d < 0) throw std::invalid_argument("d must be >= 0");
  // element counters are 64-bit; float32 1 / (B D) needs B D < 2^62 anyway
  if (sh.n > 0 && sh.b > 0 && sh.d > 0 &&
      static_cast<double>(sh.n) * static_cast<double>(sh.b) * static_cast<double>(sh.d) > 4.6e18)
    throw std::invalid_argument("n * b * d is too large");
}

void need(const void* p, const char* name) {
  if (p == nullptr) throw std::invalid_argument(std::string(name) + " must not be null");
}

void check_dtype(DType dt, const char* name) {
  if (dt != DType::f32 && dt != DType::f16 && dt != DType::bf16)
    throw std::invalid_argument(std::string(name) + " must be float32, float16 or bfloat16");
}

bool empty(InvShape sh) { return sh.n == 0 || sh.b == 0 || sh.d == 0; }

}  // namespace

void inversion_sample(const float* mu, const float* logvar, const float* x0, const float* a,
                      const float* s, InvShape shape, InvNoise noise, void* xt, DType xt_dtype,
                      int num_threads, SimdLevel simd) {
  check_shape(shape);
  check_dtype(xt_dtype, "xt_dtype");
  if (empty(shape)) return;
  need(mu, "mu"), need(logvar, "logvar"), need(x0, "x0"), need(a, "a"), need(s, "s");
  need(xt, "xt");
  kernels(simd).sample(mu, logvar, x0, a, s, shape, noise, xt, xt_dtype, num_threads);
}

void inversion_loss(const void* xt, const void* eps_hat, DType dtype, const float* x0,
                    const float* a, const float* s, InvShape shape, double* sse, float* g_eps,
                    int num_threads, SimdLevel simd) {
  check_shape(shape);
  check_dtype(dtype, "dtype");
  if (shape.n == 0 || shape.b == 0) return;
  need(sse, "sse");
  const int64_t rows = shape.n * shape.b;
  if (shape.d == 0) {
    for (int64_t r = 0; r < rows; ++r) sse[r] = 0.0;
    return;
  }
  need(xt, "xt"), need(eps_hat, "eps_hat"), need(x0, "x0"), need(a, "a"), need(s, "s");
  need(g_eps, "g_eps");
  const int64_t chunks = (shape.d + cpu::kInvChunk - 1) / cpu::kInvChunk;
  std::vector<double> partial(static_cast<size_t>(rows * chunks));
  cpu::InvLossJob job{xt, eps_hat, dtype, x0, a, s, shape, partial.data(), g_eps};
  kernels(simd).loss(job, num_threads);
  for (int64_t r = 0; r < rows; ++r) {
    double t = 0.0;
    for (int64_t c = 0; c < chunks; ++c) t += partial[static_cast<size_t>(r * chunks + c)];
    sse[r] = t;
  }
}

void inversion_update(const InvParams& params, const float* x0, const float* g_eps,
                      const void* g_model, DType gm_dtype, const float* s, const float* w,
                      InvShape shape, InvNoise noise, const InvAdam& adam, const InvUpdateOut& out,
                      int num_threads, SimdLevel simd) {
  check_shape(shape);
  check_dtype(gm_dtype, "gm_dtype");
  const bool grad_mode = out.grad_mu != nullptr;
  if (grad_mode != (out.grad_logvar != nullptr))
    throw std::invalid_argument("grad_mu and grad_logvar must be both set or both null");
  if (!grad_mode) {
    if (!(adam.lr >= 0.0f) || !std::isfinite(adam.lr)) throw std::invalid_argument("lr must be finite and >= 0");
    if (!(adam.beta1 >= 0.0f && adam.beta1 < 1.0f)) throw std::invalid_argument("beta1 must be in [0, 1)");
    if (!(adam.beta2 >= 0.0f && adam.beta2 < 1.0f)) throw std::invalid_argument("beta2 must be in [0, 1)");
    if (!(adam.eps > 0.0f) || !std::isfinite(adam.eps)) throw std::invalid_argument("eps must be finite and > 0");
    if (adam.t < 1) throw std::invalid_argument("t (the Adam step) must be >= 1");
  }
  if (out.xt_next != nullptr && out.xt_dtype != gm_dtype)
    throw std::invalid_argument("xt_dtype must equal gm_dtype (both are the model's dtype)");
  if (shape.n == 0 || shape.d == 0) return;
  need(params.mu, "mu"), need(params.logvar, "logvar");
  if (grad_mode) {
    if (out.xt_next != nullptr) throw std::invalid_argument("xt_next needs the Adam mode");
  } else {
    need(params.m_mu, "m_mu"), need(params.v_mu, "v_mu");
    need(params.m_lv, "m_lv"), need(params.v_lv, "v_lv");
  }
  if (shape.b > 0) need(g_model, "g_model"), need(s, "s");
  if (out.xt_next != nullptr) {
    need(x0, "x0"), need(out.a_next, "a_next"), need(out.s_next, "s_next");
  }
  kernels(simd).update(params, x0, g_eps, g_model, gm_dtype, s, w, shape, noise, adam, out,
                       num_threads);
}

}  // namespace memlens
