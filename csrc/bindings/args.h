// Argument conversion shared by the pybind11 modules: Python ints → raw pointers and the
// plain C++ descriptors of memlens/types.h.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "memlens/inversion.h"
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

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);  // 0 -> nullptr
}

// The inversion step's parameter block and output options from Python ints (0 = null).
inline InvParams make_inv_params(std::uintptr_t mu, std::uintptr_t logvar, std::uintptr_t m_mu,
                                 std::uintptr_t v_mu, std::uintptr_t m_lv, std::uintptr_t v_lv) {
  return InvParams{ptr<float>(mu), ptr<float>(logvar), ptr<float>(m_mu),
                   ptr<float>(v_mu), ptr<float>(m_lv), ptr<float>(v_lv)};
}

inline InvUpdateOut make_inv_out(std::uintptr_t grad_mu, std::uintptr_t grad_logvar,
                                 std::uintptr_t xt_next, DType dtype, std::uintptr_t a_next,
                                 std::uintptr_t s_next, uint64_t next_seed, uint32_t next_step) {
  InvUpdateOut out;
  out.grad_mu = ptr<float>(grad_mu);
  out.grad_logvar = ptr<float>(grad_logvar);
  out.xt_next = ptr<void>(xt_next);
  out.xt_dtype = dtype;
  out.a_next = ptr<const float>(a_next);
  out.s_next = ptr<const float>(s_next);
  out.next_noise = InvNoise{next_seed, next_step};
  return out;
}

}  // namespace memlens::bindings
