// pybind11 module memlens._cuda: the CUDA core. Takes raw device pointers (ints) and a
// cudaStream_t (int, 0 = default stream) from Python so the compiled core stays torch-free;
// releases the GIL around every call. std::invalid_argument -> ValueError,
// std::runtime_error (CUDA errors) -> RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "memlens/cuda_topk.h"

#include "args.h"

namespace py = pybind11;
using namespace memlens;

namespace {

using bindings::make_refs;

Precision make_precision(int code, bool allow_fp32) {
  if (code == 1 || code == 2 || (allow_fp32 && code == 0)) return static_cast<Precision>(code);
  throw std::invalid_argument(std::string("precision code must be ") +
                              (allow_fp32 ? "0 (fp32), " : "") + "1 (bf16) or 2 (int8); got " +
                              std::to_string(code));
}

cuda::Stream make_stream(std::uintptr_t s) { return reinterpret_cast<cuda::Stream>(s); }

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "memlens compiled CUDA core (raw device pointers, sizes, strides, a stream)";

  m.def(
      "workspace_bytes",
      [](int64_t nq, int64_t nr, int64_t d, int64_t k, int precision) {
        return cuda::workspace_bytes(nq, nr, d, k, make_precision(precision, true));
      },
      py::arg("nq"), py::arg("nr"), py::arg("d"), py::arg("k"), py::arg("precision") = 0,
      "Bytes of device workspace the caller must allocate (256-byte aligned) for a topk_fp32 "
      "(precision 0) or topk_candidates (precision 1 = bf16, 2 = int8) call of these sizes.");

  m.def(
      "topk_fp32",
      [](std::uintptr_t q, int64_t nq, int64_t d, std::uintptr_t r, int64_t nr, int64_t rs,
         int64_t cs, int rdtype, bool normalize, int64_t k, std::uintptr_t out_scores,
         std::uintptr_t out_idx, std::uintptr_t workspace, std::size_t workspace_bytes,
         std::uintptr_t stream) {
        RowMatrix refs = make_refs(r, nr, d, rs, cs, rdtype);
        py::gil_scoped_release release;
        cuda::topk_fp32(reinterpret_cast<const float*>(q), nq, refs, normalize, k,
                        reinterpret_cast<float*>(out_scores), reinterpret_cast<int64_t*>(out_idx),
                        reinterpret_cast<void*>(workspace), workspace_bytes, make_stream(stream));
      },
      py::arg("q"), py::arg("nq"), py::arg("d"), py::arg("r"), py::arg("nr"),
      py::arg("r_row_stride"), py::arg("r_col_stride"), py::arg("r_dtype"), py::arg("normalize"),
      py::arg("k"), py::arg("out_scores"), py::arg("out_idx"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("stream") = 0,
      "Exact fp32 top-k of device arrays; asynchronous on `stream`.");

  m.def(
      "topk_candidates",
      [](std::uintptr_t q, int64_t nq, int64_t d, std::uintptr_t r, int64_t nr, int64_t rs,
         int64_t cs, int rdtype, bool normalize, int precision, int64_t kc,
         std::uintptr_t out_approx, std::uintptr_t out_idx, std::uintptr_t out_err,
         std::uintptr_t workspace, std::size_t workspace_bytes, std::uintptr_t stream) {
        RowMatrix refs = make_refs(r, nr, d, rs, cs, rdtype);
        const Precision prec = make_precision(precision, false);
        py::gil_scoped_release release;
        cuda::topk_candidates(reinterpret_cast<const float*>(q), nq, refs, normalize, prec, kc,
                              reinterpret_cast<float*>(out_approx),
                              reinterpret_cast<int64_t*>(out_idx),
                              reinterpret_cast<float*>(out_err),
                              reinterpret_cast<void*>(workspace), workspace_bytes,
                              make_stream(stream));
      },
      py::arg("q"), py::arg("nq"), py::arg("d"), py::arg("r"), py::arg("nr"),
      py::arg("r_row_stride"), py::arg("r_col_stride"), py::arg("r_dtype"), py::arg("normalize"),
      py::arg("precision"), py::arg("kc"), py::arg("out_approx"), py::arg("out_idx"),
      py::arg("out_err"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream") = 0,
      "Top-kc candidates by approximate (bf16/int8) score plus a per-query bound err on "
      "|approx - exact| over every reference row; asynchronous on `stream`.");

  m.def(
      "plan_info",
      [](int64_t nq, int64_t nr, int64_t d, int64_t k, int precision) {
        const cuda::PlanInfo i = cuda::plan_info(nq, nr, d, k, make_precision(precision, true));
        py::dict out;
        out["query_tile"] = i.query_tile;
        out["ref_tile"] = i.ref_tile;
        out["dpad"] = i.dpad;
        out["splits"] = i.splits;
        out["chunk_rows"] = i.chunk_rows;
        out["slice_rows"] = i.slice_rows;
        out["list_capacity"] = i.list_capacity;
        out["fused_smem"] = i.fused_smem;
        out["merge_smem"] = i.merge_smem;
        out["workspace"] = i.workspace;
        return out;
      },
      py::arg("nq"), py::arg("nr"), py::arg("d"), py::arg("k"), py::arg("precision") = 0,
      "How a call of these sizes is executed: tiles, splits, chunking, shared memory, workspace.");

  m.def("device_count", &cuda::device_count, "Visible CUDA devices (0 without driver/device).");
  m.def("device_name", &cuda::device_name, py::arg("device_index"));
  m.attr("max_k") = cuda::kMaxK;
  m.attr("max_rows") = cuda::kMaxRows;
}
