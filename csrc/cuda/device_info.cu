// Device enumeration for the Python layer (build_info, error messages).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_check.cuh"
#include "memlens/cuda_topk.h"

namespace memlens {
namespace cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error here
    return 0;
  }
  return n;
}

std::string device_name(int device_index) {
  const int n = device_count();
  if (device_index < 0 || device_index >= n)
    throw std::invalid_argument("device_index must be in [0, " + std::to_string(n) + "); got " +
                                std::to_string(device_index));
  cudaDeviceProp prop{};
  MEMLENS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index));
  return std::string(prop.name);
}

}  // namespace cuda
}  // namespace memlens
