// Reduced-precision scan kernels for AMX (Sapphire Rapids and later): bf16 and int8 candidates
// through tile matrix multiplies, a 32 x 32 score tile per call.
//
// Why: on these Xeons vdpbf16ps issues at the rate of fp32 FMAs, so the avx512_bf16 kernel
// was no faster than fp32 (0.6x faiss fp32 at nr = 1e5, after its pilot and re-rank), while
// one core's tile unit measured 1.8 TFLOP/s in bf16 against ~0.19 for AVX-512 fp32 FMAs.
//
// Tiles (palette 1, each 16 rows x 64 bytes): 0-1 two 16-query blocks of A (32 bf16 or 64 int8
// of d per row), 2-3 two 16-reference blocks of B (row p holds elements 2p, 2p+1 (bf16) or
// 4p..4p+3 (int8) of the 16 references), 4-7 the four 16 x 16 fp32 or int32 score blocks.
// tdpbf16ps multiplies bf16 exactly and accumulates each score in fp32, one rounding per
// addition and denormals flushed, as vdpbf16ps does, so the error bound of topk.cpp covers it.
//
// GCC 12 flags the _mm512_undefined_*() operands inside its own conversion intrinsics as
// maybe-uninitialized (GCC bug 105593); the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "topk_select_avx512.h"

namespace memlens::cpu {
namespace {

// The tile shapes, loaded by ldtilecfg: palette 1, rows and bytes per row of tiles 0-7.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// The 32 x 32 product of one query micro-panel a ([32][dpad] rows of stride_a bytes) and one
// reference group b ([dpad / KG][32][KG] elements, 128 bytes a row), 64 bytes of d per tile
// step, stored to c as 32 rows of 32 fp32 (bf16 operands) or int32 (int8 operands) scores.
template <bool kInt8>
void tile_product(const char* a, const char* b, int64_t steps, int64_t stride_a, void* c) {
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  for (int64_t k = 0; k < steps; ++k) {
    _tile_loadd(0, a + k * 64, stride_a);
    _tile_loadd(1, a + 16 * stride_a + k * 64, stride_a);
    _tile_loadd(2, b + k * 16 * 128, 128);
    _tile_loadd(3, b + k * 16 * 128 + 64, 128);
    if constexpr (kInt8) {
      _tile_dpbssd(4, 0, 2);
      _tile_dpbssd(5, 0, 3);
      _tile_dpbssd(6, 1, 2);
      _tile_dpbssd(7, 1, 3);
    } else {
      _tile_dpbf16ps(4, 0, 2);
      _tile_dpbf16ps(5, 0, 3);
      _tile_dpbf16ps(6, 1, 2);
      _tile_dpbf16ps(7, 1, 3);
    }
  }
  char* out = static_cast<char*>(c);
  _tile_stored(4, out, 128);
  _tile_stored(5, out + 64, 128);
  _tile_stored(6, out + 16 * 128, 128);
  _tile_stored(7, out + 16 * 128 + 64, 128);
}

// Query micro-panels are [MR][dpad] bf16 rows (a tile row is 32 consecutive elements of one
// query); reference groups are [dpad / 2][NR][2] bf16 pairs, the layout of the avx512_bf16
// kernel, read as two tiles of 16 references with a 128-byte row stride. d is zero-padded to
// a multiple of 32: KG = 32 makes scan() clear each group before packing when d is not one.
struct AmxBf16 {
  static constexpr int MR = 32, NR = 32, KG = 32;
  static int64_t dpad(int64_t d) { return (d + KG - 1) / KG * KG; }
  static int64_t a_bytes(int64_t d) { return MR * dpad(d) * 2; }
  static int64_t b_bytes(int64_t d) { return dpad(d) / 2 * NR * 4; }
  static void pack_a(const ScanTask& t, int64_t q0, int64_t m, void* dst) {
    uint16_t* a = static_cast<uint16_t*>(dst);
    const int64_t d = t.refs->cols, dp = dpad(d);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = 0; p < d; ++p) a[i * dp + p] = float_to_bf16(t.q[(q0 + i) * d + p]);
  }
  static void put_ref(const ScanTask&, const RowQuant& rq, int j, int64_t d, void* dst) {
    put_ref_bf16<NR>(rq, j, d, static_cast<uint16_t*>(dst));
  }
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    alignas(64) float s[MR][NR];
    tile_product<false>(static_cast<const char*>(ap), static_cast<const char*>(bp), dpad(t.refs->cols) / KG,
                        dpad(t.refs->cols) * 2, s);
    const __mmask32 valid = lanes(n);
    for (int i = 0; i < m; ++i) select32(s[i], 1.0f, t.res[q0 + i], valid, r0, t);
  }
};

// int8: tdpbssd multiplies signed query codes by signed reference codes, four per step, into
// exact int32 sums (topk_candidates checks that they cannot wrap), so no +128 offset and no
// correction term are needed, unlike vpdpbusd's unsigned-by-signed operands. Micro-panels are
// [MR][dpad] codes (64 of d per tile row); groups are the avx512_bf16 int8 layout
// [dpad / 4][NR][4] followed by the NR reference scales; d is zero-padded to a multiple of 64.
struct AmxI8 {
  static constexpr int MR = 32, NR = 32, KG = 64;
  static int64_t dpad(int64_t d) { return (d + KG - 1) / KG * KG; }
  static int64_t scale_offset(int64_t d) { return dpad(d) / 4 * NR * 4; }
  static int64_t a_bytes(int64_t d) { return MR * dpad(d); }
  static int64_t b_bytes(int64_t d) { return scale_offset(d) + NR * 4; }
  static void pack_a(const ScanTask& t, int64_t q0, int64_t m, void* dst) {
    int8_t* a = static_cast<int8_t*>(dst);
    const int64_t d = t.refs->cols, dp = dpad(d);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = 0; p < d; ++p) a[i * dp + p] = static_cast<int8_t>(static_cast<int32_t>(t.q[(q0 + i) * d + p]));
  }
  static void put_ref(const ScanTask&, const RowQuant& rq, int j, int64_t d, void* dst) {
    put_ref_codes<NR, 4>(rq.codes, j, d, static_cast<int8_t*>(dst));
    reinterpret_cast<float*>(static_cast<char*>(dst) + scale_offset(d))[j] = rq.scale;
  }
  static void compute(const void* ap, const void* bp, ScanTask& t, int64_t q0, int m, int64_t r0, int n) {
    const char* a = static_cast<const char*>(ap);
    const char* b = static_cast<const char*>(bp);
    const int64_t d = t.refs->cols, dp = dpad(d);
    alignas(64) int32_t c[MR][NR];
    tile_product<true>(a, b, dp / KG, dp, c);
    const float* sr = reinterpret_cast<const float*>(b + scale_offset(d));
    const __m512 sr0 = _mm512_loadu_ps(sr), sr1 = _mm512_loadu_ps(sr + 16);
    alignas(64) float s[NR];
    const __mmask32 valid = lanes(n);
    for (int i = 0; i < m; ++i) {
      _mm512_store_ps(s, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[i])), sr0));
      _mm512_store_ps(s + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[i] + 16)), sr1));
      select32(s, t.qscale[q0 + i], t.res[q0 + i], valid, r0, t);
    }
  }
};

}  // namespace

// Tile state is per thread: configured here, on the thread that runs the task, and released
// after it so the thread does not carry 8 KiB of tile data through later context switches.
void scan_amx(ScanTask& t) {
  const TileConfig cfg;
  _tile_loadconfig(&cfg);
  if (t.precision == Precision::int8)
    scan<AmxI8>(t);
  else
    scan<AmxBf16>(t);
  _tile_release();
}

}  // namespace memlens::cpu
