// Building blocks shared by the per-ISA scan translation units (topk_scan_<isa>.cpp).
//
// Everything here has internal linkage (anonymous namespace): each ISA unit compiles its
// own copy with its own -m flags, and no copy can leak into another unit through the
// linker. For the same reason this header uses no std:: templates (see topk_internal.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>

#include "topk_internal.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace memlens::cpu {
namespace {

constexpr int64_t kAlign = 64;
// Bytes of packed reference panel streamed per pass over a thread's queries: half of a
// Zen 4 / Skylake-SP L2, so the panel stays in L2 while every query micro-panel visits it.
constexpr int64_t kPanelBytes = 512 * 1024;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// 64-byte aligned scratch memory owned by one scan (aligned operator new: an allocation
// failure inside an OpenMP region terminates with std::bad_alloc rather than corrupting).
class Scratch {
 public:
  explicit Scratch(int64_t bytes)
      : p_(static_cast<char*>(::operator new(static_cast<size_t>(round_up(bytes > 0 ? bytes : 1, kAlign)),
                                             std::align_val_t(kAlign)))) {}
  ~Scratch() { ::operator delete(p_, std::align_val_t(kAlign)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as(int64_t byte_offset = 0) const { return reinterpret_cast<T*>(p_ + byte_offset); }

 private:
  char* p_;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
  const float sub = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24, exact
  return sign ? -sub : sub;
#endif
}

// Round to the nearest bf16, ties to even (the rounding of the bf16 hardware conversions).
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_round(float f) { return bits_to_float(static_cast<uint32_t>(float_to_bf16(f)) << 16); }

// Reads reference row r as fp32 into out[0, d), scaled by 1 / max(||r||, 1e-12) when
// normalizing. The norm is accumulated in double so that the normalized row differs from
// the real-arithmetic r / ||r|| by at most two fp32 roundings per element (the error
// bound of topk_candidates relies on it).
inline void load_row(const RowMatrix& m, int64_t r, bool normalize, float* out) {
  const int64_t d = m.cols, cs = m.col_stride;
  switch (m.dtype) {
    case DType::f32: {
      const float* src = static_cast<const float*>(m.data) + r * m.row_stride;
      if (cs == 1) {
        std::memcpy(out, src, static_cast<size_t>(d) * sizeof(float));
      } else {
        for (int64_t i = 0; i < d; ++i) out[i] = src[i * cs];
      }
      break;
    }
    case DType::f16: {
      const uint16_t* src = static_cast<const uint16_t*>(m.data) + r * m.row_stride;
      int64_t i = 0;
#if defined(__F16C__)
      if (cs == 1) {
        for (; i + 8 <= d; i += 8)
          _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
      }
#endif
      for (; i < d; ++i) out[i] = half_to_float(src[i * cs]);
      break;
    }
    case DType::bf16: {
      const uint16_t* src = static_cast<const uint16_t*>(m.data) + r * m.row_stride;
      for (int64_t i = 0; i < d; ++i) out[i] = bits_to_float(static_cast<uint32_t>(src[i * cs]) << 16);
      break;
    }
  }
  if (!normalize) return;
  // Lane-blocked accumulation: independent partial sums let the compiler vectorize the
  // reduction without reassociation (no -ffast-math).
  constexpr int L = 8;
  double part[L] = {};
  int64_t i = 0;
  for (; i + L <= d; i += L)
    for (int l = 0; l < L; ++l) part[l] += static_cast<double>(out[i + l]) * out[i + l];
  for (; i < d; ++i) part[0] += static_cast<double>(out[i]) * out[i];
  double ss = 0;
  for (int l = 0; l < L; ++l) ss += part[l];
  const float inv = static_cast<float>(1.0 / std::fmax(std::sqrt(ss), 1e-12));
  for (int64_t j = 0; j < d; ++j) out[j] *= inv;
}

// Per-row quantization statistics (see RefStats): r_hat is the loaded row, rq its
// dequantized reduced-precision version.
inline void account_row(const float* r_hat, const float* rq, int64_t d, RefStats& st) {
  constexpr int L = 8;  // lane-blocked sums, as in load_row
  double e2[L] = {}, q2[L] = {}, h2[L] = {};
  int64_t i = 0;
  for (; i + L <= d; i += L)
    for (int l = 0; l < L; ++l) {
      const double h = r_hat[i + l], q = rq[i + l];
      e2[l] += (q - h) * (q - h);
      q2[l] += q * q;
      h2[l] += h * h;
    }
  for (int l = 0; i < d; ++i, ++l) {
    const double h = r_hat[i], q = rq[i];
    e2[l] += (q - h) * (q - h);
    q2[l] += q * q;
    h2[l] += h * h;
  }
  double se = 0, sq = 0, sh = 0;
  for (int l = 0; l < L; ++l) se += e2[l], sq += q2[l], sh += h2[l];
  st.max_err2 = std::fmax(st.max_err2, se);
  st.max_qnorm2 = std::fmax(st.max_qnorm2, sq);
  st.max_norm2 = std::fmax(st.max_norm2, sh);
}

// Symmetric int8 codes of a row with scale max|x| / 127; writes the dequantized row into
// deq (for the statistics) and returns the scale. Codes stay in [-127, 127].
inline float quantize_int8_row(const float* x, int64_t d, int8_t* codes, float* deq) {
  float amax = 0;
  for (int64_t i = 0; i < d; ++i) {
    const float a = std::fabs(x[i]);
    amax = a > amax ? a : amax;
  }
  const float scale = amax / 127.0f;
  if (!(scale > 0) || !std::isfinite(scale)) {  // zero row (or non-finite input): all codes 0
    for (int64_t i = 0; i < d; ++i) codes[i] = 0, deq[i] = 0;
    return std::isfinite(scale) ? 0.0f : scale;
  }
  const float inv = 127.0f / amax;
  // Branch-free so that it vectorizes: clamp, then round to nearest even by adding and
  // subtracting 1.5 * 2^23 (exact for |c| <= 127; no -ffast-math folds it away).
  constexpr float kRound = 12582912.0f;
  for (int64_t i = 0; i < d; ++i) {
    float c = x[i] * inv;
    c = c > 127.0f ? 127.0f : c;
    c = c < -127.0f ? -127.0f : c;
    c = (c + kRound) - kRound;
    codes[i] = static_cast<int8_t>(static_cast<int32_t>(c));
    deq[i] = scale * c;
  }
  return scale;
}

// One reference row as the packers see it: the loaded (and normalized) fp32 row, and for
// bf16/int8 its quantized form (bf16 values, or int8 codes with their scale).
struct RowQuant {
  float* row;      // d floats
  float* deq;      // d floats: the dequantized row (bf16 values for bf16)
  int8_t* codes;   // d int8 codes (int8)
  float scale;     // int8 scale
  // The values an fp32-arithmetic kernel multiplies: the row itself, or its bf16 rounding.
  const float* values(Precision p) const { return p == Precision::fp32 ? row : deq; }
};

inline void load_quantized(ScanTask& t, int64_t r, RowQuant& q) {
  const int64_t d = t.refs->cols;
  load_row(*t.refs, r, t.normalize, q.row);
  switch (t.precision) {
    case Precision::fp32:
      break;
    case Precision::bf16:
      for (int64_t i = 0; i < d; ++i) q.deq[i] = bf16_round(q.row[i]);
      account_row(q.row, q.deq, d, t.stats);
      break;
    case Precision::int8:
      q.scale = quantize_int8_row(q.row, d, q.codes, q.deq);
      account_row(q.row, q.deq, d, t.stats);
      break;
  }
}

// The blocked scan shared by every ISA. A kernel K provides
//   MR, NR       query rows x reference columns of its register tile;
//   KG           how many consecutive d-elements it multiplies per step (1, 2 or 4);
//   a_bytes(d)   size of one packed query micro-panel (MR queries);
//   b_bytes(d)   size of one packed group of NR references;
//   pack_a(t, q0, m, dst)       packs queries q0..q0+m-1 into a zeroed micro-panel;
//   put_ref(t, row, j, d, dst)  writes reference column j of a zeroed group;
//   compute(a, b, t, q0, m, r0, n)  multiplies one micro-panel by one group over all of d and
//                                   feeds the m x n valid scores to the reservoirs.
// Loop order: the packed panel of references (kPanelBytes, L2-resident) is visited by every
// micro-panel of the thread's queries in turn; a query micro-panel stays in L1 while it
// sweeps the panel's groups. d is never split, so each tile ends in registers with final
// scores and the threshold test runs on them directly: no score tile is ever stored.
template <class K>
void scan(ScanTask& t) {
  const int64_t d = t.refs->cols;
  const int64_t ab = round_up(K::a_bytes(d), kAlign), bb = round_up(K::b_bytes(d), kAlign);
  const int64_t nmp = (t.nq + K::MR - 1) / K::MR;
  int64_t groups = kPanelBytes / bb;
  if (groups < 1) groups = 1;
  Scratch a(nmp * ab), b(groups * bb), rows(2 * d * 4 + d);
  RowQuant rq{rows.as<float>(), rows.as<float>(d * 4), rows.as<int8_t>(2 * d * 4), 0.0f};
  const bool pad_b = d % K::KG != 0;

  for (int64_t mp = 0; mp < nmp; ++mp) {
    void* dst = a.as<char>(mp * ab);
    std::memset(dst, 0, static_cast<size_t>(ab));
    K::pack_a(t, mp * K::MR, imin(K::MR, t.nq - mp * K::MR), dst);
  }
  for (int64_t r = t.r_begin; r < t.r_end; r += groups * K::NR) {
    const int64_t nr = imin(groups * K::NR, t.r_end - r);
    const int64_t ng = (nr + K::NR - 1) / K::NR;
    for (int64_t g = 0; g < ng; ++g) {
      char* dst = b.as<char>(g * bb);
      const int64_t n = imin(K::NR, nr - g * K::NR);
      if (pad_b || n < K::NR) std::memset(dst, 0, static_cast<size_t>(bb));
      for (int64_t j = 0; j < n; ++j) {
        load_quantized(t, r + g * K::NR + j, rq);
        K::put_ref(t, rq, static_cast<int>(j), d, dst);
      }
    }
    for (int64_t mp = 0; mp < nmp; ++mp) {
      const int m = static_cast<int>(imin(K::MR, t.nq - mp * K::MR));
      // Every other micro-panel's queries appended since these reservoirs were last touched,
      // so their append positions are cold: fetch them while the first tiles compute (with
      // large k, survivors are many and each would otherwise wait on memory).
      for (int i = 0; i < m; ++i) {
        const Reservoir& res = t.res[mp * K::MR + i];
        __builtin_prefetch(res.score + res.size, 1);
        __builtin_prefetch(res.index + res.size, 1);
      }
      for (int64_t g = 0; g < ng; ++g)
        K::compute(a.as<char>(mp * ab), b.as<char>(g * bb), t, mp * K::MR, m, r + g * K::NR,
                   static_cast<int>(imin(K::NR, nr - g * K::NR)));
    }
  }
}

// Packing helpers shared by the kernels. Query micro-panels are [d / KG][MR][KG] and
// reference groups [d / KG][NR][KG]: the KG consecutive d-elements one instruction of the
// kernel multiplies sit next to each other, for each query (broadcast) or reference (lane).

// fp32 values (queries are fp32 or already bf16-rounded).
template <int MR>
void pack_a_f32(const ScanTask& t, int64_t q0, int64_t m, float* a) {
  const int64_t d = t.refs->cols;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < d; ++p) a[p * MR + i] = t.q[(q0 + i) * d + p];
}
template <int NR>
void put_ref_f32(const ScanTask& t, const RowQuant& rq, int j, int64_t d, float* b) {
  const float* v = rq.values(t.precision);
  for (int64_t p = 0; p < d; ++p) b[p * NR + j] = v[p];
}

// bf16 values (the row's bf16 rounding) in pairs of consecutive elements: groups [d / 2][NR][2].
template <int NR>
void put_ref_bf16(const RowQuant& rq, int j, int64_t d, uint16_t* b) {
  for (int64_t p = 0; p < d; ++p) b[(p / 2 * NR + j) * 2 + p % 2] = static_cast<uint16_t>(float_to_bits(rq.deq[p]) >> 16);
}

// Integer codes in KG-tuples of elements of type T (int8 query codes are held as floats),
// each element mapped by f (e.g. the +128 offset of unsigned VNNI operands).
template <int MR, int KG, class T, class F>
void pack_a_codes(const ScanTask& t, int64_t q0, int64_t m, T* a, F f) {
  const int64_t d = t.refs->cols;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < d; ++p)
      a[(p / KG * MR + i) * KG + p % KG] = f(static_cast<int32_t>(t.q[(q0 + i) * d + p]));
}
template <int NR, int KG, class T>
void put_ref_codes(const int8_t* codes, int j, int64_t d, T* b) {
  for (int64_t p = 0; p < d; ++p) b[(p / KG * NR + j) * KG + p % KG] = static_cast<T>(codes[p]);
}

// Packing layouts shared by kernels of several ISAs; a kernel adds its compute().
// fp32 values, MR x NR tile: micro-panels [d][MR], groups [d][NR].
template <int MR_, int NR_>
struct F32Layout {
  static constexpr int MR = MR_, NR = NR_, KG = 1;
  static int64_t a_bytes(int64_t d) { return d * MR * 4; }
  static int64_t b_bytes(int64_t d) { return d * NR * 4; }
  static void pack_a(const ScanTask& t, int64_t q0, int64_t m, void* dst) {
    pack_a_f32<MR>(t, q0, m, static_cast<float*>(dst));
  }
  static void put_ref(const ScanTask& t, const RowQuant& rq, int j, int64_t d, void* dst) {
    put_ref_f32<NR>(t, rq, j, d, static_cast<float*>(dst));
  }
};

// int8 codes widened to int16 pairs for vpmaddwd: micro-panels [d/2][MR][2], groups
// [d/2][NR][2] followed by the NR reference scales.
template <int MR_, int NR_>
struct I16PairLayout {
  static constexpr int MR = MR_, NR = NR_, KG = 2;
  static int64_t scale_offset(int64_t d) { return (d + 1) / 2 * NR * 4; }
  static int64_t a_bytes(int64_t d) { return (d + 1) / 2 * MR * 4; }
  static int64_t b_bytes(int64_t d) { return scale_offset(d) + NR * 4; }
  static void pack_a(const ScanTask& t, int64_t q0, int64_t m, void* dst) {
    pack_a_codes<MR, 2>(t, q0, m, static_cast<int16_t*>(dst), [](int32_t c) { return static_cast<int16_t>(c); });
  }
  static void put_ref(const ScanTask&, const RowQuant& rq, int j, int64_t d, void* dst) {
    put_ref_codes<NR, 2>(rq.codes, j, d, static_cast<int16_t*>(dst));
    reinterpret_cast<float*>(static_cast<char*>(dst) + scale_offset(d))[j] = rq.scale;
  }
};

// fp32 dot product with L independent lane sums (vectorizable without reassociation),
// combined pairwise: the rounding depth is d / L + log2(L).
inline float dot_f32(const float* x, const float* y, int64_t d) {
  constexpr int L = 16;
  float part[L] = {};
  int64_t i = 0;
  for (; i + L <= d; i += L)
    for (int l = 0; l < L; ++l) part[l] += x[i + l] * y[i + l];
  for (int l = 0; i < d; ++i, ++l) part[l] += x[i] * y[i];
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) part[l] += part[l + w];
  return part[0];
}

inline void rerank_rows(const RerankTask& t) {
  const int64_t d = t.refs->cols;
  Scratch row(d * 4);
  float* buf = row.as<float>();
  int64_t loaded = -1;
  for (int64_t o = t.begin; o < t.end; ++o) {
    const int64_t p = t.order[o], r = t.order_ref[o];
    if (r != loaded) load_row(*t.refs, loaded = r, t.normalize, buf);
    t.scores[p] = dot_f32(t.q + p / t.kc * d, buf, d);
  }
}

}  // namespace
}  // namespace memlens::cpu
