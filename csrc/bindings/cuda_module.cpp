// pybind11 module memlens._cuda: the CUDA core. Takes raw device pointers (ints) and a
// cudaStream_t (int, 0 = default stream) from Python so the compiled core stays torch-free;
// releases the GIL around every call. std::invalid_argument -> ValueError,
// std::runtime_error (CUDA errors) -> RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "memlens/cuda_flow_sim.h"
#include "memlens/cuda_inversion.h"
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

cuda::FlowField make_field(std::uintptr_t ptr, int64_t sn, int64_t st, int64_t sh, int64_t sw,
                           int64_t sc, int dtype, const char* name) {
  if (dtype != 0 && dtype != 1)
    throw std::invalid_argument(std::string(name) + "_dtype code must be 0 (f32) or 1 (f16); got " +
                                std::to_string(dtype));
  cuda::FlowField f;
  f.data = reinterpret_cast<const void*>(ptr);
  f.stride_n = sn;
  f.stride_t = st;
  f.stride_h = sh;
  f.stride_w = sw;
  f.stride_c = sc;
  f.dtype = static_cast<DType>(dtype);
  return f;
}

template <typename T>
T* ptr_or_null(std::uintptr_t p) {
  return p == 0 ? nullptr : reinterpret_cast<T*>(p);
}

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

  m.def(
      "flow_sim_workspace_bytes",
      [](int64_t n, int64_t t, int64_t h, int64_t w, bool affine) {
        return cuda::flow_sim_workspace_bytes(n, t, h, w, affine);
      },
      py::arg("n"), py::arg("t"), py::arg("h"), py::arg("w"), py::arg("affine") = false,
      "Bytes of device workspace (256-byte aligned) a flow_similarity call of these sizes needs "
      "(0: none).");

  m.def(
      "flow_similarity",
      [](std::uintptr_t gen, int64_t g_st, int64_t g_sh, int64_t g_sw, int64_t g_sc, int g_dtype,
         std::uintptr_t cands, int64_t c_sn, int64_t c_st, int64_t c_sh, int64_t c_sw,
         int64_t c_sc, int c_dtype, int64_t n, int64_t t, int64_t h, int64_t w, double mu_min,
         std::uintptr_t gen_affine, std::uintptr_t cand_affine, std::uintptr_t pair,
         std::uintptr_t gen_field, std::uintptr_t cand_field, std::uintptr_t workspace,
         std::size_t workspace_bytes, std::uintptr_t stream) {
        const cuda::FlowField g = make_field(gen, 0, g_st, g_sh, g_sw, g_sc, g_dtype, "gen");
        const cuda::FlowField c = make_field(cands, c_sn, c_st, c_sh, c_sw, c_sc, c_dtype, "cands");
        py::gil_scoped_release release;
        cuda::flow_similarity(g, c, n, t, h, w, mu_min, ptr_or_null<const double>(gen_affine),
                              ptr_or_null<const double>(cand_affine),
                              reinterpret_cast<double*>(pair), reinterpret_cast<double*>(gen_field),
                              reinterpret_cast<double*>(cand_field),
                              reinterpret_cast<void*>(workspace), workspace_bytes,
                              make_stream(stream));
      },
      py::arg("gen"), py::arg("g_stride_t"), py::arg("g_stride_h"), py::arg("g_stride_w"),
      py::arg("g_stride_c"), py::arg("g_dtype"), py::arg("cands"), py::arg("c_stride_n"),
      py::arg("c_stride_t"), py::arg("c_stride_h"), py::arg("c_stride_w"), py::arg("c_stride_c"),
      py::arg("c_dtype"), py::arg("n"), py::arg("t"), py::arg("h"), py::arg("w"),
      py::arg("mu_min"), py::arg("gen_affine"), py::arg("cand_affine"), py::arg("pair"),
      py::arg("gen_field"), py::arg("cand_field"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("stream") = 0,
      "PAIR (N, T, 4) and FIELD (T, 8), (N, T, 8) float64 statistics of device flow fields read "
      "with element strides (f32/f16); affine pointers 0 = none. Asynchronous on `stream`.");

  m.def(
      "flow_sim_plan",
      [](int64_t n, int64_t t, int64_t h, int64_t w, bool affine) {
        const cuda::FlowSimPlan p = cuda::flow_sim_plan(n, t, h, w, affine);
        py::dict out;
        out["cands_per_block"] = p.cands_per_block;
        out["threads"] = p.threads;
        out["chunk_pixels"] = p.chunk_pixels;
        out["chunks"] = p.chunks;
        out["blocks"] = p.blocks;
        out["workspace"] = p.workspace;
        return out;
      },
      py::arg("n"), py::arg("t"), py::arg("h"), py::arg("w"), py::arg("affine") = false,
      "How a flow_similarity call of these sizes is executed: CTA shape, chunks, workspace.");

  m.def("device_count", &cuda::device_count, "Visible CUDA devices (0 without driver/device).");
  m.def("device_name", &cuda::device_name, py::arg("device_index"));
  m.attr("max_k") = cuda::kMaxK;
  m.attr("max_rows") = cuda::kMaxRows;

  // ---- fused inversion step (memlens/cuda_inversion.h); device pointers as ints, 0 = null
  m.def(
      "inversion_sample",
      [](std::uintptr_t mu, std::uintptr_t logvar, std::uintptr_t x0, std::uintptr_t a, std::uintptr_t s,
         int64_t n, int64_t b, int64_t d, uint64_t seed, uint32_t step, std::uintptr_t xt, int xt_dtype,
         std::uintptr_t stream) {
        const DType dt = bindings::float_dtype(xt_dtype, "xt_dtype");
        cuda::inversion_sample(ptr_or_null<const float>(mu), ptr_or_null<const float>(logvar),
                               ptr_or_null<const float>(x0), ptr_or_null<const float>(a),
                               ptr_or_null<const float>(s), InvShape{n, b, d}, InvNoise{seed, step},
                               ptr_or_null<void>(xt), dt, make_stream(stream));
      });
  m.def("inversion_loss_blocks", &cuda::inversion_loss_blocks);
  m.def(
      "inversion_loss",
      [](std::uintptr_t xt, std::uintptr_t eps_hat, int dt, std::uintptr_t x0, std::uintptr_t a, std::uintptr_t s,
         int64_t n, int64_t b, int64_t d, std::uintptr_t partial, std::uintptr_t g_eps, std::uintptr_t stream) {
        const DType t = bindings::float_dtype(dt, "dtype");
        cuda::inversion_loss(ptr_or_null<const void>(xt), ptr_or_null<const void>(eps_hat), t,
                             ptr_or_null<const float>(x0), ptr_or_null<const float>(a),
                             ptr_or_null<const float>(s), InvShape{n, b, d}, ptr_or_null<float>(partial),
                             ptr_or_null<float>(g_eps), make_stream(stream));
      });
  m.def(
      "inversion_update",
      [](std::uintptr_t mu, std::uintptr_t logvar, std::uintptr_t m_mu, std::uintptr_t v_mu, std::uintptr_t m_lv,
         std::uintptr_t v_lv, std::uintptr_t x0, std::uintptr_t g_eps, std::uintptr_t g_model, int gm_dtype,
         std::uintptr_t s, std::uintptr_t w, int64_t n, int64_t b, int64_t d, uint64_t seed, uint32_t step,
         float lr, float beta1, float beta2, float eps, int64_t t, std::uintptr_t grad_mu, std::uintptr_t grad_logvar,
         std::uintptr_t xt_next, std::uintptr_t a_next, std::uintptr_t s_next, uint64_t next_seed,
         uint32_t next_step, std::uintptr_t stream) {
        const DType gdt = bindings::float_dtype(gm_dtype, "gm_dtype");
        const InvParams p = bindings::make_inv_params(mu, logvar, m_mu, v_mu, m_lv, v_lv);
        const InvUpdateOut out =
            bindings::make_inv_out(grad_mu, grad_logvar, xt_next, gdt, a_next, s_next, next_seed, next_step);
        cuda::inversion_update(p, ptr_or_null<const float>(x0), ptr_or_null<const float>(g_eps),
                               ptr_or_null<const void>(g_model), gdt, ptr_or_null<const float>(s),
                               ptr_or_null<const float>(w), InvShape{n, b, d}, InvNoise{seed, step},
                               InvAdam{lr, beta1, beta2, eps, t}, out, make_stream(stream));
      });
}
