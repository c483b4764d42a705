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

namespace memlens {
namespace cuda {
namespace detail {

// Device that owns `p`; host memory unknown to CUDA is an error naming the argument.
inline int device_of(const void* p, const char* name) {
  cudaPointerAttributes at{};
  MEMLENS_CUDA_CHECK(cudaPointerGetAttributes(&at, p));
  if (at.type != cudaMemoryTypeDevice && at.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string(name) + " is not a CUDA device pointer");
  return at.device;
}

// Makes `device` current for a scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MEMLENS_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) MEMLENS_CUDA_CHECK(cudaSetDevice(device));
    changed_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

}  // namespace detail
}  // namespace cuda
}  // namespace memlens
