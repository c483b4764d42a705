// Tile shapes of the fused score + select kernel, per arithmetic mode, and the execution plan
// (grid, chunking, workspace layout) derived from the problem sizes only. Plain C++: shared by
// the host code and the kernels.
#pragma once
#include <cstddef>
#include <cstdint>

namespace memlens {
namespace cuda {
namespace detail {

enum Mode : int { kModeF32 = 0, kModeBF16 = 1, kModeI8 = 2 };

constexpr int kThreads = 256;       // fused kernel and pre-passes: 8 warps
constexpr int kMergeThreads = 512;  // final per-query merge
constexpr int kBK = 32;             // K chunk; d is zero-padded to a multiple of it (dpad)

// BQ queries x BR reference rows per CTA tile.
template <int MODE>
struct TileCfg;
template <>
struct TileCfg<kModeF32> {  // SIMT fp32 FMA: 16 x 16 threads, 4 x 4 outputs each
  static constexpr int BQ = 64, BR = 64, ELT = 4;
  static constexpr int kTileBytes = 2 * kBK * (BQ + 4) * 4;  // As[kBK][BQ+4], Bs[kBK][BR+4]
};
template <>
struct TileCfg<kModeBF16> {  // WMMA bf16 16x16x16, fp32 accumulate: 2 x 4 warps of 32 x 32
  static constexpr int BQ = 64, BR = 128, ELT = 2;
  static constexpr int kTileBytes = (BQ + BR) * (kBK + 8) * 2;  // As[BQ][kBK+8], Bs[BR][kBK+8]
};
template <>
struct TileCfg<kModeI8> {  // WMMA s8 16x16x16, s32 accumulate: 2 x 4 warps of 32 x 32
  static constexpr int BQ = 64, BR = 128, ELT = 1;
  static constexpr int kTileBytes = (BQ + BR) * kBK;  // As[2][BQ][16], Bs[2][BR][16]
};

constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
constexpr int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

struct Plan {
  int mode = 0;
  int64_t nq = 0, nr = 0, d = 0, k = 0;
  int bq = 0, br = 0, elt = 0;
  int64_t dpad = 0;        // d rounded up to kBK
  int64_t qtiles = 0;      // ceil(nq / BQ)
  int64_t nq_pad = 0;      // qtiles * BQ
  int64_t cap = 0;         // per (slice, query) list capacity: k kept + buffer of appends
  int64_t sort_cap = 0;    // pow2_ceil(cap): largest in-kernel sort
  int64_t merge_cap = 0;   // merge kernel buffer (keys)
  int64_t splits = 0;      // reference slices per chunk (grid.y)
  int64_t chunk_rows = 0;  // reference rows converted per pre-pass (multiple of 128)
  int64_t slice_rows = 0;  // rows of a chunk per slice (multiple of BR)
  // workspace layout (byte offsets, each 256-aligned)
  size_t off_lists = 0, off_cnt = 0, off_thr = 0, off_qbuf = 0, off_qstats = 0, off_rbuf = 0,
         off_rscale = 0, off_rstats = 0, total = 0;
  // dynamic shared memory
  size_t score_bytes = 0, union_bytes = 0, fused_smem = 0, merge_smem = 0;
};

// Score tile in shared memory: [BQ][BR + 4] floats (int32 for int8).
template <int MODE>
constexpr size_t score_tile_bytes() {
  return static_cast<size_t>(TileCfg<MODE>::BQ) * (TileCfg<MODE>::BR + 4) * 4;
}
// Per-row state after the union region: thr u64[BQ], n int[BQ], qscale float[BQ], rscale float[BR].
template <int MODE>
constexpr size_t state_bytes() {
  return static_cast<size_t>(TileCfg<MODE>::BQ) * (8 + 4 + 4) + TileCfg<MODE>::BR * 4;
}

}  // namespace detail
}  // namespace cuda
}  // namespace memlens
