// Host side of the CUDA top-k search: argument checks, the execution plan, the workspace
// layout and the launch sequence (see topk_kernels.cuh for the kernels).
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_check.cuh"
#include "memlens/cuda_topk.h"
#include "topk_config.h"
#include "topk_kernels.cuh"

namespace memlens {
namespace cuda {
namespace detail {
namespace {

constexpr size_t kAlign = 256;
constexpr size_t kWorkspaceBudget = size_t(240) << 20;  // plan target: < 256 MB for nq <= 4096
constexpr size_t kChunkBytes = size_t(32) << 20;        // converted reference rows per chunk
constexpr int64_t kTargetCtas = 256;                    // ~2 CTAs per SM on an H100
constexpr int64_t kMaxSplits = 1024;
constexpr int64_t kMaxDim = 65536;  // int8: 127^2 * d must fit in int32 accumulators
constexpr float kUnitRoundoff = 5.9604645e-08f;  // 2^-24

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

std::string str(int64_t v) { return std::to_string(v); }

void check_sizes(int64_t nq, int64_t nr, int64_t d, int64_t k, const char* kname) {
  if (nq < 0) throw std::invalid_argument("nq must be >= 0; got " + str(nq));
  if (nr < 1) throw std::invalid_argument("nr (reference rows) must be >= 1; got " + str(nr));
  if (nr > kMaxRows)
    throw std::invalid_argument("nr must be <= 2^31 - 1 per call (shard the references); got " +
                                str(nr));
  if (d < 1 || d > kMaxDim)
    throw std::invalid_argument("d must be in [1, " + str(kMaxDim) + "]; got " + str(d));
  if (k < 1 || k > nr)
    throw std::invalid_argument(std::string(kname) + " must be in [1, nr=" + str(nr) + "]; got " +
                                str(k));
  if (k > kMaxK)
    throw std::invalid_argument(std::string(kname) + " must be <= " + str(kMaxK) +
                                " on the CUDA backend; got " + str(k));
}

template <int MODE>
void fill_tile_cfg(Plan& p) {
  p.bq = TileCfg<MODE>::BQ;
  p.br = TileCfg<MODE>::BR;
  p.elt = TileCfg<MODE>::ELT;
  p.score_bytes = score_tile_bytes<MODE>();
  p.union_bytes = static_cast<size_t>(TileCfg<MODE>::kTileBytes);
}

void layout(Plan& p) {
  size_t off = 0;
  auto take = [&off](size_t bytes) {
    const size_t at = off;
    off += align_up(bytes);
    return at;
  };
  const size_t lists = static_cast<size_t>(p.splits * p.nq);
  p.off_lists = take(lists * static_cast<size_t>(p.cap) * 8);
  p.off_cnt = take(lists * 4);
  p.off_thr = take(lists * 8);
  p.off_qbuf = take(static_cast<size_t>(p.nq_pad * p.dpad * p.elt));
  p.off_qstats = take(static_cast<size_t>(p.nq_pad) * 3 * 4);
  p.off_rbuf = take(static_cast<size_t>(p.chunk_rows * p.dpad * p.elt));
  p.off_rscale = take(static_cast<size_t>(p.chunk_rows) * 4);
  p.off_rstats = take(2 * 4);
  p.total = off;
}

// Deterministic in (nq, nr, d, k, mode): workspace_bytes and the launches agree.
Plan make_plan(int64_t nq, int64_t nr, int64_t d, int64_t k, int mode) {
  Plan p;
  p.mode = mode;
  p.nq = nq;
  p.nr = nr;
  p.d = d;
  p.k = k;
  if (mode == kModeF32) fill_tile_cfg<kModeF32>(p);
  if (mode == kModeBF16) fill_tile_cfg<kModeBF16>(p);
  if (mode == kModeI8) fill_tile_cfg<kModeI8>(p);
  p.dpad = round_up(d, kBK);
  p.qtiles = ceil_div(nq, p.bq);
  p.nq_pad = p.qtiles * p.bq;
  // Room for k kept keys plus at least 512 (>= BR) appended ones between two sorts.
  const int64_t buffer = std::max<int64_t>(512, std::min<int64_t>(ceil_div(k, 2), 2048));
  p.cap = k + buffer;
  p.sort_cap = pow2_ceil(p.cap);
  p.merge_cap = std::max<int64_t>(pow2_ceil(2 * k), 2048);
  const int64_t row_bytes = p.dpad * p.elt;
  p.chunk_rows = std::max<int64_t>(128, static_cast<int64_t>(kChunkBytes) / row_bytes / 128 * 128);
  p.chunk_rows = std::min<int64_t>(p.chunk_rows, round_up(nr, 128));

  int64_t splits = std::max<int64_t>(1, ceil_div(kTargetCtas, std::max<int64_t>(p.qtiles, 1)));
  splits = std::min<int64_t>(splits, ceil_div(p.chunk_rows, p.br));
  splits = std::min<int64_t>(splits, kMaxSplits);
  p.splits = splits;
  layout(p);
  if (p.total > kWorkspaceBudget && p.splits > 1) {
    const size_t fixed = p.total - (p.off_qbuf - p.off_lists);
    const size_t per_split = (p.off_qbuf - p.off_lists) / static_cast<size_t>(p.splits) + 1;
    const int64_t fit =
        fixed < kWorkspaceBudget ? static_cast<int64_t>((kWorkspaceBudget - fixed) / per_split) : 1;
    p.splits = std::max<int64_t>(1, std::min<int64_t>(p.splits, fit));
    layout(p);
    while (p.total > kWorkspaceBudget && p.splits > 1) {
      --p.splits;
      layout(p);
    }
  }
  p.slice_rows = round_up(ceil_div(p.chunk_rows, p.splits), p.br);

  p.union_bytes =
      align_up(std::max(p.union_bytes, static_cast<size_t>(p.sort_cap) * sizeof(uint64_t)));
  size_t state = 0;
  if (mode == kModeF32) state = state_bytes<kModeF32>();
  if (mode == kModeBF16) state = state_bytes<kModeBF16>();
  if (mode == kModeI8) state = state_bytes<kModeI8>();
  p.fused_smem = p.score_bytes + p.union_bytes + state;
  p.merge_smem = static_cast<size_t>(p.merge_cap) * sizeof(uint64_t);
  return p;
}

int mode_of(Precision precision) {
  switch (precision) {
    case Precision::fp32: return kModeF32;
    case Precision::bf16: return kModeBF16;
    case Precision::int8: return kModeI8;
  }
  throw std::invalid_argument("precision code must be 0 (fp32), 1 (bf16) or 2 (int8); got " +
                              str(static_cast<int>(precision)));
}

void check_dtype(DType dt) {
  const int c = static_cast<int>(dt);
  if (c < 0 || c > 2)
    throw std::invalid_argument("refs dtype code must be 0 (f32), 1 (f16) or 2 (bf16); got " +
                                str(c));
}

template <typename T>
T* at(void* ws, size_t off) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(ws) + off);
}

template <int MODE, typename In>
void launch_all(const Plan& p, const float* queries, const RowMatrix& refs, bool normalize,
                float* out_scores, int64_t* out_idx, float* out_err, void* ws, cudaStream_t st) {
  using T = typename ComputeType<MODE>::T;
  T* qbuf = at<T>(ws, p.off_qbuf);
  float* qscale = at<float>(ws, p.off_qstats);
  float* qnorm = qscale + p.nq_pad;
  float* qdiff = qnorm + p.nq_pad;
  T* rbuf = at<T>(ws, p.off_rbuf);
  float* rscale = at<float>(ws, p.off_rscale);
  unsigned int* rstats = at<unsigned int>(ws, p.off_rstats);
  uint64_t* lists = at<uint64_t>(ws, p.off_lists);
  int* cnt = at<int>(ws, p.off_cnt);
  uint64_t* thr = at<uint64_t>(ws, p.off_thr);
  const size_t nlists = static_cast<size_t>(p.splits * p.nq);

  MEMLENS_CUDA_CHECK(cudaMemsetAsync(cnt, 0, nlists * sizeof(int), st));
  MEMLENS_CUDA_CHECK(cudaMemsetAsync(thr, 0, nlists * sizeof(uint64_t), st));
  MEMLENS_CUDA_CHECK(cudaMemsetAsync(rstats, 0, 2 * sizeof(unsigned int), st));

  {
    const int64_t blocks = std::min<int64_t>(ceil_div(p.nq_pad, kThreads / 32), 4096);
    prep_queries_kernel<MODE><<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(
        queries, p.nq, p.d, p.dpad, p.nq_pad, qbuf, qscale, qnorm, qdiff);
    MEMLENS_CUDA_CHECK_LAUNCH(prep_queries_kernel);
  }

  MEMLENS_CUDA_CHECK(cudaFuncSetAttribute(fused_topk_kernel<MODE>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(p.fused_smem)));
  FusedArgs fa{};
  fa.qbuf = qbuf;
  fa.qscale = qscale;
  fa.rbuf = rbuf;
  fa.rscale = rscale;
  fa.lists = lists;
  fa.cnt = cnt;
  fa.thr = thr;
  fa.nq = p.nq;
  fa.dpad = p.dpad;
  fa.k = p.k;
  fa.cap = p.cap;
  fa.slice_rows = p.slice_rows;
  fa.union_bytes = p.union_bytes;
  const dim3 grid(static_cast<unsigned>(p.qtiles), static_cast<unsigned>(p.splits));
  const In* rbase = static_cast<const In*>(refs.data);

  for (int64_t c0 = 0; c0 < p.nr; c0 += p.chunk_rows) {
    const int64_t rows = std::min<int64_t>(p.chunk_rows, p.nr - c0);
    const int64_t blocks = std::min<int64_t>(ceil_div(rows, kThreads / 32), 2048);
    prep_refs_kernel<MODE, In><<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(
        rbase, refs.row_stride, refs.col_stride, c0, rows, p.d, p.dpad, normalize, rbuf, rscale,
        rstats);
    MEMLENS_CUDA_CHECK_LAUNCH(prep_refs_kernel);
    fa.rows = rows;
    fa.chunk_base = c0;
    fa.final_pass = (c0 + rows >= p.nr) ? 1 : 0;
    fused_topk_kernel<MODE><<<grid, kThreads, p.fused_smem, st>>>(fa);
    MEMLENS_CUDA_CHECK_LAUNCH(fused_topk_kernel);
  }

  MEMLENS_CUDA_CHECK(cudaFuncSetAttribute(merge_topk_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(p.merge_smem)));
  MergeArgs ma{};
  ma.lists = lists;
  ma.cnt = cnt;
  ma.nq = p.nq;
  ma.k = p.k;
  ma.cap = p.cap;
  ma.splits = p.splits;
  ma.merge_cap = p.merge_cap;
  ma.out_scores = out_scores;
  ma.out_idx = out_idx;
  ma.out_err = out_err;
  ma.qnorm = qnorm;
  ma.qdiff = qdiff;
  ma.rstats = rstats;
  ma.eta = static_cast<float>(2 * p.dpad + 64) * kUnitRoundoff;
  ma.acc_slack = MODE == kModeBF16 ? static_cast<float>(4 * p.dpad + 16) * kUnitRoundoff
                                   : 4.0f * kUnitRoundoff;
  merge_topk_kernel<<<static_cast<unsigned>(p.nq), kMergeThreads, p.merge_smem, st>>>(ma);
  MEMLENS_CUDA_CHECK_LAUNCH(merge_topk_kernel);
}

template <int MODE>
void dispatch_dtype(const Plan& p, const float* queries, const RowMatrix& refs, bool normalize,
                    float* out_scores, int64_t* out_idx, float* out_err, void* ws,
                    cudaStream_t st) {
  switch (refs.dtype) {
    case DType::f32:
      launch_all<MODE, float>(p, queries, refs, normalize, out_scores, out_idx, out_err, ws, st);
      break;
    case DType::f16:
      launch_all<MODE, __half>(p, queries, refs, normalize, out_scores, out_idx, out_err, ws, st);
      break;
    case DType::bf16:
      launch_all<MODE, __nv_bfloat16>(p, queries, refs, normalize, out_scores, out_idx, out_err,
                                      ws, st);
      break;
  }
}

void run(int mode, const float* queries, int64_t nq, const RowMatrix& refs, bool normalize,
         int64_t k, const char* kname, float* out_scores, int64_t* out_idx, float* out_err,
         void* workspace, size_t ws_bytes, Stream stream) {
  // Everything that can be checked without touching the device comes first.
  check_sizes(nq, refs.rows, refs.cols, k, kname);
  check_dtype(refs.dtype);
  if (nq == 0) return;
  if (queries == nullptr) throw std::invalid_argument("queries pointer is null");
  if (refs.data == nullptr) throw std::invalid_argument("refs pointer is null");
  if (out_scores == nullptr || out_idx == nullptr)
    throw std::invalid_argument("output pointers must not be null");
  if (mode != kModeF32 && out_err == nullptr)
    throw std::invalid_argument("out_err pointer must not be null");
  const Plan p = make_plan(nq, refs.rows, refs.cols, k, mode);
  if (workspace == nullptr || ws_bytes < p.total)
    throw std::invalid_argument("workspace too small: need " + std::to_string(p.total) +
                                " bytes (workspace_bytes(...)); got " +
                                std::to_string(workspace == nullptr ? 0 : ws_bytes));
  if (reinterpret_cast<uintptr_t>(workspace) % kAlign != 0)
    throw std::invalid_argument("workspace must be 256-byte aligned");

  const int dev = device_of(queries, "queries");
  if (device_of(refs.data, "refs") != dev || device_of(workspace, "workspace") != dev ||
      device_of(out_scores, "out_scores") != dev || device_of(out_idx, "out_idx") != dev ||
      (out_err != nullptr && device_of(out_err, "out_err") != dev))
    throw std::invalid_argument("queries, refs, outputs and workspace must be on the same device");
  DeviceGuard guard(dev);
  int major = 0, optin = 0;
  MEMLENS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  MEMLENS_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (major < 8)
    throw std::runtime_error("memlens CUDA backend needs compute capability >= 8.0 (device " +
                             std::to_string(dev) + " has " + std::to_string(major) + ".x)");
  const size_t need = std::max(p.fused_smem, p.merge_smem);
  if (need > static_cast<size_t>(optin))
    throw std::invalid_argument(std::string(kname) + "=" + str(k) + " needs " + std::to_string(need) +
                                " bytes of shared memory per block; this device allows " +
                                std::to_string(optin));

  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (mode == kModeF32)
    dispatch_dtype<kModeF32>(p, queries, refs, normalize, out_scores, out_idx, nullptr, workspace, st);
  else if (mode == kModeBF16)
    dispatch_dtype<kModeBF16>(p, queries, refs, normalize, out_scores, out_idx, out_err, workspace, st);
  else
    dispatch_dtype<kModeI8>(p, queries, refs, normalize, out_scores, out_idx, out_err, workspace, st);
}

}  // namespace
}  // namespace detail

size_t workspace_bytes(int64_t nq, int64_t nr, int64_t d, int64_t k, Precision precision) {
  const int mode = detail::mode_of(precision);
  detail::check_sizes(nq, nr, d, k, "k");
  if (nq == 0) return 0;
  return detail::make_plan(nq, nr, d, k, mode).total;
}

PlanInfo plan_info(int64_t nq, int64_t nr, int64_t d, int64_t k, Precision precision) {
  const int mode = detail::mode_of(precision);
  detail::check_sizes(nq, nr, d, k, "k");
  if (nq == 0) throw std::invalid_argument("plan_info needs nq >= 1");
  const detail::Plan p = detail::make_plan(nq, nr, d, k, mode);
  PlanInfo info;
  info.query_tile = p.bq;
  info.ref_tile = p.br;
  info.dpad = p.dpad;
  info.splits = p.splits;
  info.chunk_rows = p.chunk_rows;
  info.slice_rows = p.slice_rows;
  info.list_capacity = p.cap;
  info.fused_smem = p.fused_smem;
  info.merge_smem = p.merge_smem;
  info.workspace = p.total;
  return info;
}

void topk_fp32(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
               int64_t k, float* scores, int64_t* indices, void* workspace,
               size_t workspace_bytes, Stream stream) {
  detail::run(detail::kModeF32, queries, nq, refs, normalize_refs, k, "k", scores, indices,
              nullptr, workspace, workspace_bytes, stream);
}

void topk_candidates(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
                     Precision precision, int64_t kc, float* approx, int64_t* indices, float* err,
                     void* workspace, size_t workspace_bytes, Stream stream) {
  const int mode = detail::mode_of(precision);
  if (mode == detail::kModeF32)
    throw std::invalid_argument("topk_candidates precision must be 1 (bf16) or 2 (int8); got 0");
  detail::run(mode, queries, nq, refs, normalize_refs, kc, "kc", approx, indices, err, workspace,
              workspace_bytes, stream);
}

}  // namespace cuda
}  // namespace memlens
