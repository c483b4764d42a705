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
#include "memlens/topk.h"

#include "args.h"

namespace py = pybind11;
using namespace memlens;

namespace {

using bindings::make_refs;

CpuOptions make_options(int num_threads, int simd, int64_t state_bytes = 0) {
  if (state_bytes < 0) throw std::invalid_argument("state_bytes must be >= 0");
  if (simd < 0 || simd > 3) throw std::invalid_argument("simd level must be 0..3");
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
