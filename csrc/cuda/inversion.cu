// CUDA kernels of the fused inversion step. One thread per element; the update kernel's thread
// owns one parameter element and loops over its B samples (regenerating the noise), so every
// parameter is read and written once per step. Math and generator: memlens/inversion_math.h.
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda_check.cuh"
#include "memlens/cuda_inversion.h"
#include "memlens/inversion_math.h"

namespace memlens::cuda {
namespace {

constexpr int kThreads = 256;

template <class S>
__global__ void sample_kernel(const float* __restrict__ mu, const float* __restrict__ lv,
                              const float* __restrict__ x0, const float* __restrict__ a,
                              const float* __restrict__ s, int64_t b, int64_t d, uint32_t k0,
                              uint32_t k1, uint32_t step, typename S::T* __restrict__ out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t row = blockIdx.y;
  if (j >= d) return;
  const int64_t p = row / b * d + j;
  const int64_t L = row * d + j;
  const float e = inv::normal_at(static_cast<uint32_t>(row), static_cast<uint64_t>(j), step, k0, k1);
  out[L] = S::store(a[row] * x0[p] + s[row] * (mu[p] + inv::exp_f(0.5f * lv[p]) * e));
}

template <class S>
__global__ void loss_kernel(const typename S::T* __restrict__ xt,
                            const typename S::T* __restrict__ eh, const float* __restrict__ x0,
                            const float* __restrict__ a, const float* __restrict__ s, int64_t b,
                            int64_t d, float inv_bd, float* __restrict__ partial,
                            float* __restrict__ g_eps) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t row = blockIdx.y;
  float e = 0.0f;
  if (j < d) {
    const int64_t L = row * d + j;
    const float inv_a = 1.0f / a[row], sr = s[row];
    e = (S::load(xt[L]) - sr * S::load(eh[L])) * inv_a - x0[row / b * d + j];
    g_eps[L] = -2.0f * sr * inv_a * inv_bd * e;
  }
  float v = e * e;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  __shared__ float warp_sums[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) t += warp_sums[w];  // fixed order
    partial[row * gridDim.x + blockIdx.x] = t;
  }
}

struct UpdateArgs {
  InvParams p;
  const float* x0;
  const float* g_eps;
  const float* s;
  const float* w;
  int64_t b, d;
  uint32_t k0, k1, step;
  float inv_d, lr_bc1, b1, b2, inv_bc2s, aeps;
  float* grad_mu;
  float* grad_lv;
  void* xt_next;
  const float* a_next;
  const float* s_next;
  uint32_t q0, q1, step2;
};

template <class S>
__global__ void update_kernel(UpdateArgs u, const typename S::T* __restrict__ gm) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t i = blockIdx.y;
  if (j >= u.d) return;
  const int64_t p = i * u.d + j;
  float gmu = 0.0f, glv = 0.0f;
  for (int64_t bb = 0; bb < u.b; ++bb) {
    const int64_t row = i * u.b + bb;
    const int64_t L = row * u.d + j;
    const float e = inv::normal_at(static_cast<uint32_t>(row), static_cast<uint64_t>(j), u.step, u.k0, u.k1);
    float gn = u.s[row] * S::load(gm[L]);
    if (u.g_eps != nullptr) gn -= u.g_eps[L];
    gmu += gn;
    glv += gn * e;
  }
  float mu = u.p.mu[p], lv = u.p.logvar[p];
  const float sig = inv::exp_f(0.5f * lv);
  const float wi = u.w != nullptr ? u.w[i] * u.inv_d : 0.0f;
  const float dmu = gmu + wi * mu;
  const float dlv = 0.5f * sig * glv + 0.5f * wi * (sig * sig - 1.0f);
  if (u.grad_mu != nullptr) {
    u.grad_mu[p] = dmu;
    u.grad_lv[p] = dlv;
    return;
  }
  const float m1 = u.b1 * u.p.m_mu[p] + (1.0f - u.b1) * dmu;
  const float v1 = u.b2 * u.p.v_mu[p] + (1.0f - u.b2) * dmu * dmu;
  const float m2 = u.b1 * u.p.m_lv[p] + (1.0f - u.b1) * dlv;
  const float v2 = u.b2 * u.p.v_lv[p] + (1.0f - u.b2) * dlv * dlv;
  mu -= u.lr_bc1 * m1 / (sqrtf(v1) * u.inv_bc2s + u.aeps);
  lv -= u.lr_bc1 * m2 / (sqrtf(v2) * u.inv_bc2s + u.aeps);
  u.p.m_mu[p] = m1;
  u.p.v_mu[p] = v1;
  u.p.m_lv[p] = m2;
  u.p.v_lv[p] = v2;
  u.p.mu[p] = mu;
  u.p.logvar[p] = lv;
  if (u.xt_next == nullptr) return;
  const float sig2 = inv::exp_f(0.5f * lv), x = u.x0[p];
  auto* xo = static_cast<typename S::T*>(u.xt_next);
  for (int64_t bb = 0; bb < u.b; ++bb) {
    const int64_t row = i * u.b + bb;
    const int64_t L = row * u.d + j;
    const float e = inv::normal_at(static_cast<uint32_t>(row), static_cast<uint64_t>(j), u.step2, u.q0, u.q1);
    xo[L] = S::store(u.a_next[row] * x + u.s_next[row] * (mu + sig2 * e));
  }
}

void check_shape(InvShape sh) {
  if (sh.n < 0 || sh.b < 0 || sh.d < 0) throw std::invalid_argument("n, b and d must be >= 0");
  if (sh.n * sh.b > 65535) throw std::invalid_argument("n * b must be <= 65535 on the CUDA backend");
}

dim3 grid(int64_t d, int64_t rows) {
  return dim3(static_cast<unsigned>((d + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
}

}  // namespace

void inversion_sample(const float* mu, const float* logvar, const float* x0, const float* a,
                      const float* s, InvShape sh, InvNoise nz, void* xt, DType dt, Stream stream) {
  check_shape(sh);
  if (sh.n == 0 || sh.b == 0 || sh.d == 0) return;
  const uint32_t k0 = static_cast<uint32_t>(nz.seed), k1 = static_cast<uint32_t>(nz.seed >> 32);
  const dim3 g = grid(sh.d, sh.n * sh.b);
  switch (dt) {
    case DType::f16: sample_kernel<inv::F16><<<g, kThreads, 0, stream>>>(mu, logvar, x0, a, s, sh.b, sh.d, k0, k1, nz.step, static_cast<uint16_t*>(xt)); break;
    case DType::bf16: sample_kernel<inv::BF16><<<g, kThreads, 0, stream>>>(mu, logvar, x0, a, s, sh.b, sh.d, k0, k1, nz.step, static_cast<uint16_t*>(xt)); break;
    default: sample_kernel<inv::F32><<<g, kThreads, 0, stream>>>(mu, logvar, x0, a, s, sh.b, sh.d, k0, k1, nz.step, static_cast<float*>(xt)); break;
  }
  MEMLENS_CUDA_CHECK_LAUNCH("inversion sample");
}

int64_t inversion_loss_blocks(int64_t d) { return (d + kThreads - 1) / kThreads; }

void inversion_loss(const void* xt, const void* eps_hat, DType dt, const float* x0, const float* a,
                    const float* s, InvShape sh, float* partial, float* g_eps, Stream stream) {
  check_shape(sh);
  if (sh.n == 0 || sh.b == 0 || sh.d == 0) return;
  const dim3 g = grid(sh.d, sh.n * sh.b);
  const float inv_bd = static_cast<float>(1.0 / (static_cast<double>(sh.b) * static_cast<double>(sh.d)));
  switch (dt) {
    case DType::f16: loss_kernel<inv::F16><<<g, kThreads, 0, stream>>>(static_cast<const uint16_t*>(xt), static_cast<const uint16_t*>(eps_hat), x0, a, s, sh.b, sh.d, inv_bd, partial, g_eps); break;
    case DType::bf16: loss_kernel<inv::BF16><<<g, kThreads, 0, stream>>>(static_cast<const uint16_t*>(xt), static_cast<const uint16_t*>(eps_hat), x0, a, s, sh.b, sh.d, inv_bd, partial, g_eps); break;
    default: loss_kernel<inv::F32><<<g, kThreads, 0, stream>>>(static_cast<const float*>(xt), static_cast<const float*>(eps_hat), x0, a, s, sh.b, sh.d, inv_bd, partial, g_eps); break;
  }
  MEMLENS_CUDA_CHECK_LAUNCH("inversion loss");
}

void inversion_update(const InvParams& params, const float* x0, const float* g_eps,
                      const void* g_model, DType gm_dtype, const float* s, const float* w,
                      InvShape sh, InvNoise nz, const InvAdam& ad, const InvUpdateOut& out,
                      Stream stream) {
  check_shape(sh);
  if ((out.grad_mu == nullptr) != (out.grad_logvar == nullptr))
    throw std::invalid_argument("grad_mu and grad_logvar must be both set or both null");
  if (out.xt_next != nullptr && out.xt_dtype != gm_dtype)
    throw std::invalid_argument("xt_dtype must equal gm_dtype (both are the model's dtype)");
  if (sh.n == 0 || sh.d == 0) return;
  UpdateArgs u{};
  u.p = params;
  u.x0 = x0;
  u.g_eps = g_eps;
  u.s = s;
  u.w = w;
  u.b = sh.b;
  u.d = sh.d;
  u.k0 = static_cast<uint32_t>(nz.seed);
  u.k1 = static_cast<uint32_t>(nz.seed >> 32);
  u.step = nz.step;
  u.inv_d = 1.0f / static_cast<float>(sh.d);
  const double bc1 = 1.0 - std::pow(static_cast<double>(ad.beta1), static_cast<double>(ad.t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(ad.beta2), static_cast<double>(ad.t));
  u.lr_bc1 = static_cast<float>(ad.lr / bc1);
  u.b1 = ad.beta1;
  u.b2 = ad.beta2;
  u.inv_bc2s = static_cast<float>(1.0 / std::sqrt(bc2));
  u.aeps = ad.eps;
  u.grad_mu = out.grad_mu;
  u.grad_lv = out.grad_logvar;
  u.xt_next = out.xt_next;
  u.a_next = out.a_next;
  u.s_next = out.s_next;
  u.q0 = static_cast<uint32_t>(out.next_noise.seed);
  u.q1 = static_cast<uint32_t>(out.next_noise.seed >> 32);
  u.step2 = out.next_noise.step;
  const dim3 g = grid(sh.d, sh.n);
  switch (gm_dtype) {
    case DType::f16: update_kernel<inv::F16><<<g, kThreads, 0, stream>>>(u, static_cast<const uint16_t*>(g_model)); break;
    case DType::bf16: update_kernel<inv::BF16><<<g, kThreads, 0, stream>>>(u, static_cast<const uint16_t*>(g_model)); break;
    default: update_kernel<inv::F32><<<g, kThreads, 0, stream>>>(u, static_cast<const float*>(g_model)); break;
  }
  MEMLENS_CUDA_CHECK_LAUNCH("inversion update");
}

}  // namespace memlens::cuda
