// The fused InvMM inversion step on CUDA GPUs: the same passes and structs as the CPU API
// (memlens/inversion.h), on device pointers, enqueued on `stream` (asynchronous). Bad arguments
// throw std::invalid_argument before anything is enqueued; CUDA failures std::runtime_error.
#pragma once
#include <cstdint>

#include "memlens/inversion.h"

struct CUstream_st;

namespace memlens::cuda {

using Stream = CUstream_st*;

void inversion_sample(const float* mu, const float* logvar, const float* x0, const float* a,
                      const float* s, InvShape shape, InvNoise noise, void* xt, DType xt_dtype,
                      Stream stream);

// Float32 partial sums of e^2, `inversion_loss_blocks(d)` per sample, row-major
// (N*B, blocks): the caller sums them (in float64) when it needs the loss.
int64_t inversion_loss_blocks(int64_t d);
void inversion_loss(const void* xt, const void* eps_hat, DType dtype, const float* x0,
                    const float* a, const float* s, InvShape shape, float* partial, float* g_eps,
                    Stream stream);

void inversion_update(const InvParams& params, const float* x0, const float* g_eps,
                      const void* g_model, DType gm_dtype, const float* s, const float* w,
                      InvShape shape, InvNoise noise, const InvAdam& adam, const InvUpdateOut& out,
                      Stream stream);

}  // namespace memlens::cuda
