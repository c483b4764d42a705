// Scan kernels for baseline x86-64 (SSE2 at most, through auto-vectorization). Plain loops
// over a small register tile; they define the behaviour the SIMD levels reproduce.
#include "topk_scan.h"

namespace memlens::cpu {
namespace {

// fp32 (and bf16, whose values are rounded during packing): 4 queries x 8 references.
struct ScalarF32 : F32Layout<4, 8> {
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const float* a = static_cast<const float*>(ap);
    const float* b = static_cast<const float*>(bp);
    float c[MR][NR] = {};
    for (int64_t p = 0, d = t.refs->cols; p < d; ++p, a += MR, b += NR)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) c[i][j] += a[i] * b[j];
    for (int i = 0; i < m; ++i) {
      Reservoir& r = t.res[q0 + i];
      for (int j = 0; j < n; ++j)
        if (!(c[i][j] <= r.threshold)) reservoir_push(r, c[i][j], r0 + j, t.k, t.cap, t.scratch);
    }
  }
};

// int8: codes widened to int16, exact int32 sums, dequantized as (sum * s_ref) * s_query.
// A group holds [d][NR] int16 codes followed by the NR reference scales.
struct ScalarI8 {
  static constexpr int MR = 4, NR = 8, KG = 1;
  static int64_t a_bytes(int64_t d) { return d * MR * 2; }
  static int64_t scale_offset(int64_t d) { return round_up(d * NR * 2, 4); }
  static int64_t b_bytes(int64_t d) { return scale_offset(d) + NR * 4; }
  static void pack_a(const ScanTask& t, int64_t q0, int64_t m, void* dst) {
    pack_a_codes<MR, 1>(t, q0, m, static_cast<int16_t*>(dst), [](int32_t c) { return static_cast<int16_t>(c); });
  }
  static void put_ref(const ScanTask&, const RowQuant& rq, int j, int64_t d, void* dst) {
    put_ref_codes<NR, 1>(rq.codes, j, d, static_cast<int16_t*>(dst));
    reinterpret_cast<float*>(static_cast<char*>(dst) + scale_offset(d))[j] = rq.scale;
  }
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const int64_t d = t.refs->cols;
    const int16_t* a = static_cast<const int16_t*>(ap);
    const int16_t* b = static_cast<const int16_t*>(bp);
    int32_t c[MR][NR] = {};
    for (int64_t p = 0; p < d; ++p, a += MR, b += NR)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) c[i][j] += int32_t{a[i]} * b[j];
    const float* sr = reinterpret_cast<const float*>(static_cast<const char*>(bp) + scale_offset(d));
    for (int i = 0; i < m; ++i) {
      Reservoir& r = t.res[q0 + i];
      const float sq = t.qscale[q0 + i];
      for (int j = 0; j < n; ++j) {
        const float s = static_cast<float>(c[i][j]) * sr[j] * sq;
        if (!(s <= r.threshold)) reservoir_push(r, s, r0 + j, t.k, t.cap, t.scratch);
      }
    }
  }
};

}  // namespace

void scan_scalar(ScanTask& t) {
  if (t.precision == Precision::int8)
    scan<ScalarI8>(t);
  else
    scan<ScalarF32>(t);
}

void rerank_scalar(const RerankTask& t) { rerank_rows(t); }

}  // namespace memlens::cpu
