// pybind11 module memlens._C: the CPU core. Takes raw data pointers (ints) from Python so
// the compiled core stays torch-free; releases the GIL around every kernel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "memlens/flow_sim.h"
#include "memlens/inversion.h"
#include "memlens/topk.h"

#include "args.h"

namespace py = pybind11;
using namespace memlens;

namespace {

using bindings::make_refs;

CpuOptions make_options(int num_threads, int simd, int64_t state_bytes = 0) {
  if (state_bytes < 0) throw std::invalid_argument("state_bytes must be >= 0");
  if (simd < 0 || simd > kMaxSimdLevel)
    throw std::invalid_argument("simd level must be 0.." + std::to_string(kMaxSimdLevel));
  CpuOptions o;
  o.num_threads = num_threads;
  o.simd = static_cast<SimdLevel>(simd);
  o.state_bytes = state_bytes;
  if (!simd_compiled(o.simd) || static_cast<int>(o.simd) > static_cast<int>(detect_simd()))
    throw std::invalid_argument(std::string("simd level ") + simd_name(o.simd) +
                                " is not available on this CPU/build");
  return o;
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "memlens compiled CPU core";

  m.def(
      "topk_fp32",
      [](std::uintptr_t q, int64_t nq, int64_t d, std::uintptr_t r, int64_t nr, int64_t rs,
         int64_t cs, int rdtype, bool normalize, int64_t k, std::uintptr_t out_scores,
         std::uintptr_t out_idx, int num_threads, int simd, int64_t state_bytes) {
        RowMatrix refs = make_refs(r, nr, d, rs, cs, rdtype);
        CpuOptions opt = make_options(num_threads, simd, state_bytes);
        py::gil_scoped_release release;
        topk_fp32(reinterpret_cast<const float*>(q), nq, refs, normalize, k,
                  reinterpret_cast<float*>(out_scores), reinterpret_cast<int64_t*>(out_idx), opt);
      },
      py::arg("q"), py::arg("nq"), py::arg("d"), py::arg("r"), py::arg("nr"), py::arg("r_row_stride"),
      py::arg("r_col_stride"), py::arg("r_dtype"), py::arg("normalize"), py::arg("k"),
      py::arg("out_scores"), py::arg("out_idx"), py::arg("num_threads"), py::arg("simd"),
      py::arg("state_bytes") = 0);

  m.def(
      "topk_candidates",
      [](std::uintptr_t q, int64_t nq, int64_t d, std::uintptr_t r, int64_t nr, int64_t rs,
         int64_t cs, int rdtype, bool normalize, int precision, int64_t kc, std::uintptr_t out_approx,
         std::uintptr_t out_idx, std::uintptr_t out_err, int num_threads, int simd,
         int64_t state_bytes) {
        if (precision < 1 || precision > 2) throw std::invalid_argument("precision code must be 1 or 2");
        RowMatrix refs = make_refs(r, nr, d, rs, cs, rdtype);
        CpuOptions opt = make_options(num_threads, simd, state_bytes);
        py::gil_scoped_release release;
        topk_candidates(reinterpret_cast<const float*>(q), nq, refs, normalize,
                        static_cast<Precision>(precision), kc, reinterpret_cast<float*>(out_approx),
                        reinterpret_cast<int64_t*>(out_idx), reinterpret_cast<float*>(out_err), opt);
      },
      py::arg("q"), py::arg("nq"), py::arg("d"), py::arg("r"), py::arg("nr"), py::arg("r_row_stride"),
      py::arg("r_col_stride"), py::arg("r_dtype"), py::arg("normalize"), py::arg("precision"),
      py::arg("kc"), py::arg("out_approx"), py::arg("out_idx"), py::arg("out_err"),
      py::arg("num_threads"), py::arg("simd"), py::arg("state_bytes") = 0);

  m.def(
      "rerank_fp32",
      [](std::uintptr_t q, int64_t nq, int64_t d, std::uintptr_t r, int64_t nr, int64_t rs,
         int64_t cs, int rdtype, bool normalize, std::uintptr_t idx, int64_t kc,
         std::uintptr_t out_scores, int num_threads, int simd) {
        RowMatrix refs = make_refs(r, nr, d, rs, cs, rdtype);
        CpuOptions opt = make_options(num_threads, simd);
        py::gil_scoped_release release;
        rerank_fp32(reinterpret_cast<const float*>(q), nq, refs, normalize,
                    reinterpret_cast<const int64_t*>(idx), kc, reinterpret_cast<float*>(out_scores),
                    opt);
      },
      py::arg("q"), py::arg("nq"), py::arg("d"), py::arg("r"), py::arg("nr"), py::arg("r_row_stride"),
      py::arg("r_col_stride"), py::arg("r_dtype"), py::arg("normalize"), py::arg("idx"), py::arg("kc"),
      py::arg("out_scores"), py::arg("num_threads"), py::arg("simd"));

  m.def(
      "flow_similarity",
      [](std::uintptr_t gen, int gen_dtype, const std::vector<int64_t>& gen_strides, std::uintptr_t cands,
         int cands_dtype, const std::vector<int64_t>& cands_strides, int64_t n, int64_t t, int64_t h, int64_t w,
         double mu_min, std::uintptr_t gen_affine, std::uintptr_t cand_affine, std::uintptr_t out_pair,
         std::uintptr_t out_gen_field, std::uintptr_t out_cand_field, int num_threads, int simd,
         int64_t block_pixels) {
        auto dtype = [](int code, const char* name) {
          if (code != 0 && code != 1)
            throw std::invalid_argument(std::string(name) + " code must be 0 (f32) or 1 (f16); got " +
                                        std::to_string(code));
          return static_cast<DType>(code);
        };
        if (gen_strides.size() != 4)
          throw std::invalid_argument("gen_strides must have 4 entries (T, H, W, 2); got " +
                                      std::to_string(gen_strides.size()));
        if (cands_strides.size() != 5)
          throw std::invalid_argument("cands_strides must have 5 entries (N, T, H, W, 2); got " +
                                      std::to_string(cands_strides.size()));
        FlowArray g{reinterpret_cast<const void*>(gen), dtype(gen_dtype, "gen_dtype"), 0,
                    gen_strides[0], gen_strides[1], gen_strides[2], gen_strides[3]};
        FlowArray c{reinterpret_cast<const void*>(cands), dtype(cands_dtype, "cands_dtype"), cands_strides[0],
                    cands_strides[1], cands_strides[2], cands_strides[3], cands_strides[4]};
        const CpuOptions cpu = make_options(num_threads, simd);
        FlowOptions opt;
        opt.num_threads = cpu.num_threads;
        opt.simd = cpu.simd;
        opt.block_pixels = block_pixels;
        py::gil_scoped_release release;
        flow_similarity(g, c, FlowShape{n, t, h, w}, mu_min, reinterpret_cast<const double*>(gen_affine),
                        reinterpret_cast<const double*>(cand_affine), reinterpret_cast<double*>(out_pair),
                        reinterpret_cast<double*>(out_gen_field), reinterpret_cast<double*>(out_cand_field), opt);
      },
      py::arg("gen"), py::arg("gen_dtype"), py::arg("gen_strides"), py::arg("cands"), py::arg("cands_dtype"),
      py::arg("cands_strides"), py::arg("n"), py::arg("t"), py::arg("h"), py::arg("w"), py::arg("mu_min"),
      py::arg("gen_affine"), py::arg("cand_affine"), py::arg("out_pair"), py::arg("out_gen_field"),
      py::arg("out_cand_field"), py::arg("num_threads"), py::arg("simd"), py::arg("block_pixels") = 0,
      "Flow-field similarity statistics (memlens/flow_sim.h); pointers are ints, strides in elements, "
      "affine pointers 0 for none.");

  // ---- fused inversion step (memlens/inversion.h); pointers are ints, 0 for null
  m.def(
      "inversion_sample",
      [](std::uintptr_t mu, std::uintptr_t logvar, std::uintptr_t x0, std::uintptr_t a, std::uintptr_t s,
         int64_t n, int64_t b, int64_t d, uint64_t seed, uint32_t step, std::uintptr_t xt, int xt_dtype,
         int num_threads, int simd) {
        const CpuOptions cpu = make_options(num_threads, simd);
        const DType dt = bindings::float_dtype(xt_dtype, "xt_dtype");
        py::gil_scoped_release release;
        inversion_sample(reinterpret_cast<const float*>(mu), reinterpret_cast<const float*>(logvar),
                         reinterpret_cast<const float*>(x0), reinterpret_cast<const float*>(a),
                         reinterpret_cast<const float*>(s), InvShape{n, b, d}, InvNoise{seed, step},
                         reinterpret_cast<void*>(xt), dt, cpu.num_threads, cpu.simd);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("x0"), py::arg("a"), py::arg("s"), py::arg("n"), py::arg("b"),
      py::arg("d"), py::arg("seed"), py::arg("step"), py::arg("xt"), py::arg("xt_dtype"), py::arg("num_threads"),
      py::arg("simd"));
  m.def(
      "inversion_loss",
      [](std::uintptr_t xt, std::uintptr_t eps_hat, int dt, std::uintptr_t x0, std::uintptr_t a, std::uintptr_t s,
         int64_t n, int64_t b, int64_t d, std::uintptr_t sse, std::uintptr_t g_eps, int num_threads, int simd) {
        const CpuOptions cpu = make_options(num_threads, simd);
        const DType t = bindings::float_dtype(dt, "dtype");
        py::gil_scoped_release release;
        inversion_loss(reinterpret_cast<const void*>(xt), reinterpret_cast<const void*>(eps_hat), t,
                       reinterpret_cast<const float*>(x0), reinterpret_cast<const float*>(a),
                       reinterpret_cast<const float*>(s), InvShape{n, b, d}, reinterpret_cast<double*>(sse),
                       reinterpret_cast<float*>(g_eps), cpu.num_threads, cpu.simd);
      },
      py::arg("xt"), py::arg("eps_hat"), py::arg("dtype"), py::arg("x0"), py::arg("a"), py::arg("s"), py::arg("n"),
      py::arg("b"), py::arg("d"), py::arg("sse"), py::arg("g_eps"), py::arg("num_threads"), py::arg("simd"));
  m.def(
      "inversion_update",
      [](std::uintptr_t mu, std::uintptr_t logvar, std::uintptr_t m_mu, std::uintptr_t v_mu, std::uintptr_t m_lv,
         std::uintptr_t v_lv, std::uintptr_t x0, std::uintptr_t g_eps, std::uintptr_t g_model, int gm_dtype,
         std::uintptr_t s, std::uintptr_t w, int64_t n, int64_t b, int64_t d, uint64_t seed, uint32_t step,
         float lr, float beta1, float beta2, float eps, int64_t t, std::uintptr_t grad_mu, std::uintptr_t grad_logvar,
         std::uintptr_t xt_next, std::uintptr_t a_next, std::uintptr_t s_next, uint64_t next_seed,
         uint32_t next_step, int num_threads, int simd) {
        const CpuOptions cpu = make_options(num_threads, simd);
        const DType gdt = bindings::float_dtype(gm_dtype, "gm_dtype");
        const InvParams p = bindings::make_inv_params(mu, logvar, m_mu, v_mu, m_lv, v_lv);
        const InvUpdateOut out =
            bindings::make_inv_out(grad_mu, grad_logvar, xt_next, gdt, a_next, s_next, next_seed, next_step);
        py::gil_scoped_release release;
        inversion_update(p, reinterpret_cast<const float*>(x0), reinterpret_cast<const float*>(g_eps),
                         reinterpret_cast<const void*>(g_model), gdt, reinterpret_cast<const float*>(s),
                         reinterpret_cast<const float*>(w), InvShape{n, b, d}, InvNoise{seed, step},
                         InvAdam{lr, beta1, beta2, eps, t}, out, cpu.num_threads, cpu.simd);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("m_mu"), py::arg("v_mu"), py::arg("m_lv"), py::arg("v_lv"),
      py::arg("x0"), py::arg("g_eps"), py::arg("g_model"), py::arg("gm_dtype"), py::arg("s"), py::arg("w"),
      py::arg("n"), py::arg("b"), py::arg("d"), py::arg("seed"), py::arg("step"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("t"), py::arg("grad_mu"), py::arg("grad_logvar"),
      py::arg("xt_next"), py::arg("a_next"), py::arg("s_next"), py::arg("next_seed"), py::arg("next_step"),
      py::arg("num_threads"), py::arg("simd"));

  m.def("detect_simd", [] { return static_cast<int>(detect_simd()); },
        "Highest SIMD level this CPU supports (CPUID), capped by what was compiled.");
  m.def("simd_name", [](int level) { return std::string(simd_name(static_cast<SimdLevel>(level))); });
  m.def("simd_compiled", [](int level) { return simd_compiled(static_cast<SimdLevel>(level)); });
  m.def("max_threads", &max_threads);
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
