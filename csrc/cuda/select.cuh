// Device building blocks of the top-k selection: ordered 64-bit keys, warp reductions and a
// block-wide bitonic sort in shared memory.
//
// A candidate (score, index) is packed into one uint64 key whose unsigned order is exactly the
// output order: the high word is the score mapped to an order-preserving uint32 (-0.0 folded
// onto +0.0), the low word is 0xFFFFFFFF - index, so for equal scores the lower index has the
// larger key. Keys are unique (indices are), every real key is non-zero (index < 2^31 makes the
// low word >= 2^31), and 0 is the "empty" sentinel that sorts last.
#pragma once
#include <cstdint>

namespace memlens {
namespace cuda {
namespace detail {

__device__ __forceinline__ uint32_t float_to_ordered(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u << 1) == 0u) u = 0u;  // -0.0 -> +0.0: equal scores must give equal words
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float ordered_to_float(uint32_t o) {
  const uint32_t u = (o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o;
  return __uint_as_float(u);
}

__device__ __forceinline__ uint64_t make_key(float score, uint32_t index) {
  return (static_cast<uint64_t>(float_to_ordered(score)) << 32) |
         static_cast<uint64_t>(0xFFFFFFFFu - index);
}

__device__ __forceinline__ float key_score(uint64_t key) {
  return ordered_to_float(static_cast<uint32_t>(key >> 32));
}

__device__ __forceinline__ int64_t key_index(uint64_t key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

// Sum over the warp, in a fixed order, returned to every lane (lane 0's value is broadcast so
// that all lanes agree bit for bit).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return __shfl_sync(0xffffffffu, v, 0);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__host__ __device__ __forceinline__ int64_t pow2_ceil(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Sorts buf[0, n) (n a power of two) in descending key order. Must be called by every thread
// of the block, after the writes to buf are complete and synchronized; ends synchronized.
__device__ __forceinline__ void block_sort_desc(uint64_t* buf, int n) {
  const int half = n >> 1;
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const uint64_t x = buf[lo];
        const uint64_t y = buf[hi];
        const bool desc = (lo & size) == 0;  // the last stage (size == n) is all descending
        if ((x < y) == desc) {
          buf[lo] = y;
          buf[hi] = x;
        }
      }
      __syncthreads();
    }
  }
}

// Pads buf[n, pow2_ceil(n)) with the empty key and sorts buf descending. Block-wide, like
// block_sort_desc (the caller has synchronized the writes to buf[0, n)).
__device__ __forceinline__ void block_sort_prefix_desc(uint64_t* buf, int n) {
  const int p = static_cast<int>(pow2_ceil(n < 1 ? 1 : n));
  for (int i = n + threadIdx.x; i < p; i += blockDim.x) buf[i] = 0ull;
  __syncthreads();
  block_sort_desc(buf, p);
}

}  // namespace detail
}  // namespace cuda
}  // namespace memlens
