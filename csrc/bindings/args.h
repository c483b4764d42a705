// Argument conversion shared by the pybind11 modules: Python ints → raw pointers and the
// plain C++ descriptors of memlens/types.h.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "memlens/types.h"

namespace memlens::bindings {

inline RowMatrix make_refs(std::uintptr_t ptr, int64_t rows, int64_t cols, int64_t row_stride,
                           int64_t col_stride, int dtype) {
  if (dtype < 0 || dtype > 2)
    throw std::invalid_argument("r_dtype code must be 0 (f32), 1 (f16) or 2 (bf16); got " +
                                std::to_string(dtype));
  RowMatrix m;
  m.data = reinterpret_cast<const void*>(ptr);
  m.rows = rows;
  m.cols = cols;
  m.row_stride = row_stride;
  m.col_stride = col_stride;
  m.dtype = static_cast<DType>(dtype);
  return m;
}

// A float element type code (0 f32, 1 f16, 2 bf16), naming the argument on error.
inline DType float_dtype(int code, const char* name) {
  if (code < 0 || code > 2)
    throw std::invalid_argument(std::string(name) + " code must be 0 (f32), 1 (f16) or 2 (bf16); got " +
                                std::to_string(code));
  return static_cast<DType>(code);
}

}  // namespace memlens::bindings
