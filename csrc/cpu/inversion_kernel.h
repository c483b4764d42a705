// The inversion-step passes, written once as plain loops that the compiler vectorizes under
// `omp simd` for the ISA of the including translation unit (inversion_<isa>.cpp). Everything is
// in an unnamed namespace: each unit gets its own copy (see inversion_internal.h).
//
// Work split: one task = one image i and one chunk of kInvChunk elements (all B samples of it),
// so every parameter element is read and written once per pass and the regenerated noise of a
// sample never leaves registers. Chunk results do not depend on the thread count.
#pragma once
#include <omp.h>

#include <cmath>
#include <cstdint>

#include "inversion_internal.h"
#include "inversion_normals.h"
#include "memlens/inversion_math.h"

namespace memlens::cpu {
namespace {

using inv::BF16;
using inv::F16;
using inv::F32;

inline int64_t n_chunks(int64_t d) { return (d + kInvChunk - 1) / kInvChunk; }

// Below this many element-samples a pass runs on the calling thread: waking a team costs more
// than the pass (and, on a loaded machine, a descheduled team member costs a time slice).
constexpr int64_t kParallelMin = int64_t{1} << 16;

template <class S>
void sample_impl(const float* mu, const float* logvar, const float* x0, const float* a,
                 const float* s, InvShape sh, InvNoise nz, void* xt_v, int num_threads) {
  using T = typename S::T;
  T* xt = static_cast<T*>(xt_v);
  const int64_t chunks = n_chunks(sh.d), tasks = sh.n * chunks, work = sh.n * sh.b * sh.d;
  const uint32_t k0 = static_cast<uint32_t>(nz.seed), k1 = static_cast<uint32_t>(nz.seed >> 32);
#pragma omp parallel for schedule(static) if (work >= kParallelMin) num_threads(num_threads > 0 ? num_threads : omp_get_max_threads())
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t i = task / chunks, j0 = task % chunks * kInvChunk;
    const int64_t len = sh.d - j0 < kInvChunk ? sh.d - j0 : kInvChunk;
    const float* m = mu + i * sh.d + j0;
    const float* lv = logvar + i * sh.d + j0;
    const float* x = x0 + i * sh.d + j0;
    alignas(64) float sig[kInvChunk];
    alignas(64) float eps[kInvChunk];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) sig[j] = inv::exp_f(0.5f * lv[j]);
    for (int64_t b = 0; b < sh.b; ++b) {
      const int64_t row = i * sh.b + b;
      const float ab = a[row], sb = s[row];
      fill_normals(eps, static_cast<uint32_t>(row), static_cast<uint64_t>(j0), len, nz.step, k0, k1);
      T* out = xt + row * sh.d + j0;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) out[j] = S::store(ab * x[j] + sb * (m[j] + sig[j] * eps[j]));
    }
  }
}

template <class S>
void loss_impl(const InvLossJob& jb, int num_threads) {
  using T = typename S::T;
  const InvShape sh = jb.shape;
  const int64_t chunks = n_chunks(sh.d), rows = sh.n * sh.b, tasks = rows * chunks;
  const int64_t work = rows * sh.d;
  const T* xt = static_cast<const T*>(jb.xt);
  const T* eh = static_cast<const T*>(jb.eps_hat);
  const float inv_bd = 1.0f / static_cast<float>(static_cast<double>(sh.b) * static_cast<double>(sh.d));
#pragma omp parallel for schedule(static) if (work >= kParallelMin) num_threads(num_threads > 0 ? num_threads : omp_get_max_threads())
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t row = task / chunks, j0 = task % chunks * kInvChunk;
    const int64_t len = sh.d - j0 < kInvChunk ? sh.d - j0 : kInvChunk;
    const int64_t i = row / sh.b;
    const float ab = jb.a[row], sb = jb.s[row];
    const float inv_a = 1.0f / ab, c = -2.0f * sb * inv_a * inv_bd;
    const T* xr = xt + row * sh.d + j0;
    const T* er = eh + row * sh.d + j0;
    const float* x = jb.x0 + i * sh.d + j0;
    float* g = jb.g_eps + row * sh.d + j0;
    float acc = 0.0f;  // <= 2048 terms per chunk, in vector lanes: ~1e-6 relative
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < len; ++j) {
      const float e = (S::load(xr[j]) - sb * S::load(er[j])) * inv_a - x[j];
      acc += e * e;
      g[j] = c * e;
    }
    jb.partial[task] = static_cast<double>(acc);
  }
}

template <class S>
void update_impl(const InvParams& p, const float* x0, const float* g_eps, const void* g_model_v,
                 const float* s, const float* w, InvShape sh, InvNoise nz, const InvAdam& ad,
                 const InvUpdateOut& out, int num_threads) {
  using T = typename S::T;
  const T* gm = static_cast<const T*>(g_model_v);
  const int64_t chunks = n_chunks(sh.d), tasks = sh.n * chunks;
  const int64_t work = sh.n * (sh.b + 1) * sh.d;
  const uint32_t k0 = static_cast<uint32_t>(nz.seed), k1 = static_cast<uint32_t>(nz.seed >> 32);
  const float inv_d = 1.0f / static_cast<float>(sh.d);
  const bool grad_mode = out.grad_mu != nullptr;
  // Adam constants, as torch.optim.Adam forms them (float64 then used in float32)
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(ad.beta1), static_cast<double>(ad.t)));
  const float bc2s = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(ad.beta2), static_cast<double>(ad.t))));
  const float step_size = ad.lr / bc1, b1 = ad.beta1, b2 = ad.beta2, om1 = 1.0f - ad.beta1, om2 = 1.0f - ad.beta2;
  const float inv_bc2s = 1.0f / bc2s, aeps = ad.eps;
  // float lane counts are powers of two: kInvChunk-long stack arrays stay aligned
#pragma omp parallel for schedule(static) if (work >= kParallelMin) num_threads(num_threads > 0 ? num_threads : omp_get_max_threads())
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t i = task / chunks, j0 = task % chunks * kInvChunk;
    const int64_t len = sh.d - j0 < kInvChunk ? sh.d - j0 : kInvChunk;
    const int64_t off = i * sh.d + j0;
    alignas(64) float gmu[kInvChunk];
    alignas(64) float glv[kInvChunk];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      gmu[j] = 0.0f;
      glv[j] = 0.0f;
    }
    alignas(64) float eps[kInvChunk];
    for (int64_t b = 0; b < sh.b; ++b) {
      const int64_t row = i * sh.b + b;
      const float sb = s[row];
      fill_normals(eps, static_cast<uint32_t>(row), static_cast<uint64_t>(j0), len, nz.step, k0, k1);
      const T* g = gm + row * sh.d + j0;
      if (g_eps != nullptr) {
        const float* ge = g_eps + row * sh.d + j0;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const float gn = sb * S::load(g[j]) - ge[j];
          gmu[j] += gn;
          glv[j] += gn * eps[j];
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const float gn = sb * S::load(g[j]);
          gmu[j] += gn;
          glv[j] += gn * eps[j];
        }
      }
    }
    float* mu = p.mu + off;
    float* lv = p.logvar + off;
    const float wi = w != nullptr ? w[i] * inv_d : 0.0f;
    if (grad_mode) {
      float* om = out.grad_mu + off;
      float* ol = out.grad_logvar + off;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const float sig = inv::exp_f(0.5f * lv[j]);
        om[j] = gmu[j] + wi * mu[j];
        ol[j] = 0.5f * sig * glv[j] + 0.5f * wi * (sig * sig - 1.0f);
      }
      continue;
    }
    float* mm = p.m_mu + off;
    float* vm = p.v_mu + off;
    float* ml = p.m_lv + off;
    float* vl = p.v_lv + off;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const float sig = inv::exp_f(0.5f * lv[j]);
      const float dmu = gmu[j] + wi * mu[j];
      const float dlv = 0.5f * sig * glv[j] + 0.5f * wi * (sig * sig - 1.0f);
      const float m1 = b1 * mm[j] + om1 * dmu, v1 = b2 * vm[j] + om2 * dmu * dmu;
      const float m2 = b1 * ml[j] + om1 * dlv, v2 = b2 * vl[j] + om2 * dlv * dlv;
      mm[j] = m1;
      vm[j] = v1;
      ml[j] = m2;
      vl[j] = v2;
      mu[j] -= step_size * m1 / (inv::sqrt_f(v1) * inv_bc2s + aeps);
      lv[j] -= step_size * m2 / (inv::sqrt_f(v2) * inv_bc2s + aeps);
    }
    if (out.xt_next == nullptr) continue;
    // the next x_t from the new parameters while they are in cache
    alignas(64) float sig[kInvChunk];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) sig[j] = inv::exp_f(0.5f * lv[j]);
    const uint32_t step2 = out.next_noise.step;
    const uint32_t q0 = static_cast<uint32_t>(out.next_noise.seed);
    const uint32_t q1 = static_cast<uint32_t>(out.next_noise.seed >> 32);
    const float* x = x0 + off;
    for (int64_t b = 0; b < sh.b; ++b) {
      const int64_t row = i * sh.b + b;
      const float ab = out.a_next[row], sb = out.s_next[row];
      fill_normals(eps, static_cast<uint32_t>(row), static_cast<uint64_t>(j0), len, step2, q0, q1);
      auto* xo = static_cast<T*>(out.xt_next) + row * sh.d + j0;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) xo[j] = S::store(ab * x[j] + sb * (mu[j] + sig[j] * eps[j]));
    }
  }
}

// Dispatch on the storage type of the model-facing tensors.
template <template <class> class F, class... A>
void by_dtype(DType dt, A&&... args) {
  switch (dt) {
    case DType::f16: F<F16>::run(args...); break;
    case DType::bf16: F<BF16>::run(args...); break;
    default: F<F32>::run(args...); break;
  }
}

template <class S> struct SampleOp { template <class... A> static void run(A... a) { sample_impl<S>(a...); } };
template <class S> struct LossOp { template <class... A> static void run(A... a) { loss_impl<S>(a...); } };
template <class S> struct UpdateOp { template <class... A> static void run(A... a) { update_impl<S>(a...); } };

void k_sample(const float* mu, const float* logvar, const float* x0, const float* a, const float* s,
              InvShape shape, InvNoise noise, void* xt, DType dt, int nt) {
  by_dtype<SampleOp>(dt, mu, logvar, x0, a, s, shape, noise, xt, nt);
}
void k_loss(const InvLossJob& job, int nt) { by_dtype<LossOp>(job.dtype, job, nt); }
void k_update(const InvParams& p, const float* x0, const float* g_eps, const void* g_model,
              DType gm_dtype, const float* s, const float* w, InvShape shape, InvNoise noise,
              const InvAdam& adam, const InvUpdateOut& out, int nt) {
  // x_next is written in out.xt_dtype; reading g_model in gm_dtype: both are the model's dtype
  by_dtype<UpdateOp>(gm_dtype, p, x0, g_eps, g_model, s, w, shape, noise, adam, out, nt);
}

}  // namespace
}  // namespace memlens::cpu
