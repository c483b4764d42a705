// Error checking for CUDA runtime calls: every failure becomes a std::runtime_error that names
// the call site and the CUDA error.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace memlens {
namespace cuda {
namespace detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file,
                                          int line) {
  throw std::runtime_error(std::string("memlens CUDA error: ") + what + " failed at " + file + ":" +
                           std::to_string(line) + ": " + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err));
}

}  // namespace detail
}  // namespace cuda
}  // namespace memlens

#define MEMLENS_CUDA_CHECK(call)                                                        \
  do {                                                                                  \
    cudaError_t memlens_err_ = (call);                                                  \
    if (memlens_err_ != cudaSuccess)                                                    \
      ::memlens::cuda::detail::throw_cuda_error(memlens_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: configuration errors are reported by cudaGetLastError.
#define MEMLENS_CUDA_CHECK_LAUNCH(name) MEMLENS_CUDA_CHECK(cudaGetLastError())
