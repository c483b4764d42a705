// Plain C++ types shared by every kernel family. No torch, no Python.
#pragma once
#include <cstdint>

namespace memlens {

// Element type of an input matrix (codes are part of the Python binding ABI).
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// Arithmetic used for the candidate stage of the search.
enum class Precision : int { fp32 = 0, bf16 = 1, int8 = 2 };

// CPU SIMD level, ordered: a level may run every kernel of the levels below it.
//   avx2        : AVX2 + FMA + F16C
//   avx512      : AVX-512 F/BW/DQ/VL
//   avx512_bf16 : avx512 + AVX512_BF16 + AVX512_VNNI
//   amx         : avx512_bf16 + AMX-TILE/BF16/INT8, with the OS's permission for tile data
enum class SimdLevel : int { scalar = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx = 4 };
constexpr int kMaxSimdLevel = 4;

// A read-only 2-D matrix of rows with arbitrary element strides (in elements,
// not bytes). Used for reference embeddings, which may be a memory-mapped file
// larger than RAM, so kernels read it in place and never copy it whole.
struct RowMatrix {
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
  DType dtype = DType::f32;
};

}  // namespace memlens
