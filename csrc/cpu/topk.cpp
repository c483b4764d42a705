// Exact cosine / inner-product top-k on the CPU: threading, blocking, selection and the
// error bound of the reduced-precision candidate stage. The arithmetic runs in the per-ISA
// scan kernels (topk_scan_<isa>.cpp), chosen from CpuOptions::simd.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "topk_internal.h"
#include "topk_scan.h"

namespace memlens {
namespace cpu {

namespace {

struct Candidate {
  float score;
  int64_t index;
};

bool better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// Default reservoir memory per query block (all threads, CpuOptions::state_bytes): bounds the
// workspace for large k and nq. Every extra query block is one more pass over the references,
// so it is sized to hold 4096 queries x k = 1000 (fp32) or their bf16/int8 candidate lists.
constexpr int64_t kDefaultStateBudget = int64_t{192} << 20;
// Below this many queries per thread, threads split the references instead of the queries:
// each thread packs every reference it scores, and packing a row costs about as much as
// scoring it against a few dozen queries.
constexpr int64_t kMinQueriesPerThread = 256;

using ScanFn = void (*)(ScanTask&);
using RerankFn = void (*)(const RerankTask&);

ScanFn scan_for(SimdLevel level, Precision p) {
  switch (level) {
    case SimdLevel::amx:
#if MEMLENS_HAVE_AMX
      if (p != Precision::fp32) return scan_amx;
#endif
      [[fallthrough]];
    case SimdLevel::avx512_bf16:
#if MEMLENS_HAVE_AVX512BF16
      if (p != Precision::fp32) return scan_avx512bf16;
#endif
      [[fallthrough]];
    case SimdLevel::avx512:
#if MEMLENS_HAVE_AVX512
      return scan_avx512;
#endif
      [[fallthrough]];
    case SimdLevel::avx2:
#if MEMLENS_HAVE_AVX2
      return scan_avx2;
#endif
      [[fallthrough]];
    case SimdLevel::scalar:
      break;
  }
  return scan_scalar;
}

RerankFn rerank_for(SimdLevel level) {
  switch (level) {
    case SimdLevel::amx:
    case SimdLevel::avx512_bf16:
    case SimdLevel::avx512:
#if MEMLENS_HAVE_AVX512
      return rerank_avx512;
#endif
      [[fallthrough]];
    case SimdLevel::avx2:
#if MEMLENS_HAVE_AVX2
      return rerank_avx2;
#endif
      [[fallthrough]];
    case SimdLevel::scalar:
      break;
  }
  return rerank_scalar;
}

int thread_count(const CpuOptions& opt) {
#ifdef _OPENMP
  return opt.num_threads > 0 ? opt.num_threads : omp_get_max_threads();
#else
  return 1;
#endif
}

void check_refs(const RowMatrix& refs) {
  if (refs.rows < 1 || refs.cols < 1) throw std::invalid_argument("refs must have at least one row and one column");
  if (refs.data == nullptr) throw std::invalid_argument("refs data pointer is null");
}

// The search itself: every thread fills reservoirs for its (queries, references) slice,
// then the reservoirs of each query are merged into its sorted top-k.
void search(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize, Precision prec,
            int64_t k, float* out_scores, int64_t* out_idx, RefStats* stats,
            const std::vector<float>* qvalues, const std::vector<float>* qscales, const CpuOptions& opt) {
  const int64_t d = refs.cols, nr = refs.rows;
  const ScanFn scan_fn = scan_for(opt.simd, prec);
  int threads = thread_count(opt);
  // Tiny problems are not worth waking a team for.
  if (static_cast<double>(nq) * static_cast<double>(nr) * static_cast<double>(d) < 1 << 22) threads = 1;
  const int64_t cap = k + std::max<int64_t>(k / 2, 16);
  const bool split_queries = nq >= kMinQueriesPerThread * threads;
  const int64_t sources = split_queries ? 1 : threads;
  constexpr int64_t entry_bytes = sizeof(float) + sizeof(int64_t);
  const int64_t budget = opt.state_bytes > 0 ? opt.state_bytes : kDefaultStateBudget;
  const int64_t qb = std::clamp<int64_t>(budget / (cap * entry_bytes * sources), 1, nq);
  // Left uninitialized: reservoirs only read what they wrote.
  std::unique_ptr<float[]> store_score(new float[static_cast<size_t>(qb * sources * cap)]);
  std::unique_ptr<int64_t[]> store_index(new int64_t[static_cast<size_t>(qb * sources * cap)]);
  std::vector<Reservoir> res(static_cast<size_t>(qb * sources));
  const float* qv = qvalues ? qvalues->data() : queries;
  const float* qs = qscales ? qscales->data() : nullptr;

  for (int64_t q0 = 0; q0 < nq; q0 += qb) {
    const int64_t nb = std::min(qb, nq - q0);
    int team = 1;
#pragma omp parallel num_threads(threads)
    {
      int tid = 0, nt = 1;
#ifdef _OPENMP
      tid = omp_get_thread_num();
      nt = omp_get_num_threads();
#endif
#pragma omp single
      team = nt;
      ScanTask task{};
      task.refs = &refs;
      task.normalize = normalize;
      task.precision = prec;
      task.k = k;
      task.cap = cap;
      int64_t qa = 0, qz = nb;
      task.r_begin = 0;
      task.r_end = nr;
      if (split_queries) {
        qa = nb * tid / nt;
        qz = nb * (tid + 1) / nt;
        task.res = res.data() + qa;
      } else {
        task.r_begin = nr * tid / nt;
        task.r_end = nr * (tid + 1) / nt;
        task.res = res.data() + int64_t{tid} * qb;
      }
      task.q = qv + (q0 + qa) * d;
      task.qscale = qs ? qs + q0 + qa : nullptr;
      task.nq = qz - qa;
      for (int64_t i = 0; i < task.nq; ++i) {
        const int64_t slot = (task.res - res.data() + i) * cap;
        task.res[i] = Reservoir{store_score.get() + slot, store_index.get() + slot, 0,
                                std::numeric_limits<float>::quiet_NaN()};
      }
      std::vector<float> scratch(static_cast<size_t>(cap));
      task.scratch = scratch.data();
      if (task.nq > 0 && task.r_end > task.r_begin) scan_fn(task);
      if (stats) {
#pragma omp critical(memlens_topk_stats)
        {
          stats->max_err2 = std::max(stats->max_err2, task.stats.max_err2);
          stats->max_qnorm2 = std::max(stats->max_qnorm2, task.stats.max_qnorm2);
          stats->max_norm2 = std::max(stats->max_norm2, task.stats.max_norm2);
        }
      }
#pragma omp barrier
      std::vector<Candidate> merged;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < nb; ++i) {
        merged.clear();
        const int64_t nsrc = split_queries ? 1 : team;
        for (int64_t s = 0; s < nsrc; ++s) {
          const Reservoir& r = res[static_cast<size_t>(s * qb + i)];
          for (int64_t j = 0; j < r.size; ++j) merged.push_back(Candidate{r.score[j], r.index[j]});
        }
        std::nth_element(merged.begin(), merged.begin() + (k - 1), merged.end(), better);
        std::sort(merged.begin(), merged.begin() + k, better);
        for (int64_t j = 0; j < k; ++j) {
          out_scores[(q0 + i) * k + j] = merged[static_cast<size_t>(j)].score;
          out_idx[(q0 + i) * k + j] = merged[static_cast<size_t>(j)].index;
        }
      }
    }
  }
}

}  // namespace

namespace {

// Float scores as unsigned keys in the same order (-inf lowest; the reservoirs hold no NaN).
inline uint32_t order_key(float f) {
  const uint32_t u = float_to_bits(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float key_to_float(uint32_t key) { return bits_to_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key); }

// The k-th largest of s[0, n) (1 <= k <= n) by radix selection on order_key: three passes of
// 11, 11 and 10 bits, each a histogram of the keys still in the running, then only the keys of
// the bin that holds the k-th. std::nth_element on the same reservoirs (compares with
// unpredictable branches) was 12% of a k = 1000 search. `keys` holds n entries.
float kth_largest(const float* s, int64_t n, int64_t k, uint32_t* keys) {
  for (int64_t i = 0; i < n; ++i) keys[i] = order_key(s[i]);
  constexpr int kShift[3] = {21, 10, 0}, kBits[3] = {11, 11, 10};
  uint32_t prefix = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShift[pass];
    const uint32_t bins = 1u << kBits[pass];
    uint32_t hist[2048] = {};
    for (int64_t i = 0; i < n; ++i) ++hist[(keys[i] >> shift) & (bins - 1)];
    uint32_t b = bins - 1;
    int64_t above = 0;
    for (; b > 0 && above + hist[b] < k; --b) above += hist[b];
    k -= above;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i)
      if (((keys[i] >> shift) & (bins - 1)) == b) keys[kept++] = keys[i];
    n = kept;
    prefix |= b << shift;
  }
  return key_to_float(prefix);
}

}  // namespace

void reservoir_compact(Reservoir& r, int64_t k, float* scratch) {
  // The k-th largest score t, then one stable pass: keep every score > t and, in index
  // order, as many scores == t as fill k.
  const float t = kth_largest(r.score, r.size, k, reinterpret_cast<uint32_t*>(scratch));
  int64_t ties = k;
  for (int64_t i = 0; i < r.size; ++i) ties -= r.score[i] > t;
  int64_t n = 0;
  for (int64_t i = 0; i < r.size; ++i) {
    const float s = r.score[i];
    if (s > t || (s == t && ties-- > 0)) {
      r.score[n] = s;
      r.index[n] = r.index[i];
      ++n;
    }
  }
  r.size = k;
  r.threshold = t;
}

}  // namespace cpu

using cpu::RefStats;

void topk_fp32(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs, int64_t k,
               float* scores, int64_t* indices, const CpuOptions& opt) {
  cpu::check_refs(refs);
  if (k < 1 || k > refs.rows) throw std::invalid_argument("k must be in [1, refs.rows]");
  if (nq <= 0) return;
  cpu::search(queries, nq, refs, normalize_refs, Precision::fp32, k, scores, indices, nullptr, nullptr,
              nullptr, opt);
}

void topk_candidates(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
                     Precision precision, int64_t kc, float* approx, int64_t* indices, float* err,
                     const CpuOptions& opt) {
  cpu::check_refs(refs);
  if (kc < 1 || kc > refs.rows) throw std::invalid_argument("kc must be in [1, refs.rows]");
  if (precision != Precision::bf16 && precision != Precision::int8)
    throw std::invalid_argument("topk_candidates precision must be bf16 or int8");
  const int64_t d = refs.cols;
  // int8 dot products accumulate exactly in int32 (modulo 2^32, so even the offset trick of
  // the VNNI kernel is exact) as long as the true sum fits: |sum| <= 127^2 * d < 2^31.
  if (precision == Precision::int8 && d > 131072)
    throw std::invalid_argument("int8 candidates support d <= 131072, got d = " + std::to_string(d));
  if (nq <= 0) return;

  // Quantize the queries exactly as the kernels expect them, and measure what it cost:
  // per query ||q_q|| and ||q_q - q|| (double, from exactly representable values).
  std::vector<float> qvalues(static_cast<size_t>(nq * d)), qscales;
  std::vector<double> qnorm(static_cast<size_t>(nq)), qerr(static_cast<size_t>(nq));
  if (precision == Precision::int8) qscales.resize(static_cast<size_t>(nq));
  std::vector<int8_t> codes(static_cast<size_t>(d));
  std::vector<float> deq(static_cast<size_t>(d));
  for (int64_t q = 0; q < nq; ++q) {
    const float* x = queries + q * d;
    float* v = qvalues.data() + q * d;
    if (precision == Precision::bf16) {
      for (int64_t i = 0; i < d; ++i) v[i] = deq[static_cast<size_t>(i)] = cpu::bf16_round(x[i]);
    } else {
      qscales[static_cast<size_t>(q)] = cpu::quantize_int8_row(x, d, codes.data(), deq.data());
      for (int64_t i = 0; i < d; ++i) v[i] = codes[static_cast<size_t>(i)];
    }
    double n2 = 0, e2 = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double a = deq[static_cast<size_t>(i)], b = x[i];
      n2 += a * a;
      e2 += (a - b) * (a - b);
    }
    qnorm[static_cast<size_t>(q)] = std::sqrt(n2);
    qerr[static_cast<size_t>(q)] = std::sqrt(e2);
  }

  RefStats st;
  cpu::search(queries, nq, refs, normalize_refs, precision, kc, approx, indices, &st, &qvalues,
              precision == Precision::int8 ? &qscales : nullptr, opt);

  // |approx - q.r*| <= |approx - q_q.r_q|       accumulation / dequantization rounding
  //                  + ||q_q|| ||r_q - r_hat||   reference quantization
  //                  + ||q_q|| ||r_hat - r*||    fp32 normalization (<= 2 roundings/element)
  //                  + ||q_q - q|| ||r*||        query quantization
  // with r* the real-arithmetic (normalized) row and r_hat its fp32 version.
  const double u = std::ldexp(1.0, -24);
  const double r_err = std::sqrt(st.max_err2), r_q = std::sqrt(st.max_qnorm2), r_hat = std::sqrt(st.max_norm2);
  const double dd = static_cast<double>(d);
  for (int64_t q = 0; q < nq; ++q) {
    const double nqq = qnorm[static_cast<size_t>(q)], eq = qerr[static_cast<size_t>(q)];
    double acc;
    if (precision == Precision::bf16) {
      // Products of bf16 values are exact in fp32; a chain of d fp32 additions (gamma_d), plus
      // the absolute error of denormal flushing in the AVX512_BF16 instruction.
      const double gamma = dd * u / (1 - dd * u);
      acc = gamma * nqq * r_q + dd * std::ldexp(1.0, -124) * (1 + nqq + r_q);
    } else {
      // The int32 sum is exact; float(sum) * s_r * s_q rounds three times.
      acc = 4 * u * nqq * r_q;
    }
    const double normalization = 3 * u * nqq * r_hat;
    const double bound = (acc + nqq * r_err + normalization + eq * r_hat * (1 + 3 * u)) * (1 + std::ldexp(1.0, -20));
    float f = static_cast<float>(bound);
    if (static_cast<double>(f) < bound) f = std::nextafter(f, std::numeric_limits<float>::infinity());
    err[q] = f;
  }
}

void rerank_fp32(const float* queries, int64_t nq, const RowMatrix& refs, bool normalize_refs,
                 const int64_t* indices, int64_t kc, float* scores, const CpuOptions& opt) {
  cpu::check_refs(refs);
  if (nq <= 0 || kc <= 0) return;
  for (int64_t i = 0; i < nq * kc; ++i)
    if (indices[i] < 0 || indices[i] >= refs.rows) throw std::invalid_argument("rerank index out of range");
  // Candidate positions ordered by reference index (stable): a counting sort when the
  // candidates are dense in the references, a comparison sort when they are sparse.
  // The kernel reads both in sequence: looking the reference up through a random position
  // was a cache miss per candidate, the largest cost of the whole re-rank.
  const int64_t total = nq * kc, nr = refs.rows;
  std::vector<int64_t> order(static_cast<size_t>(total)), order_ref(static_cast<size_t>(total));
  if (nr <= 4 * total) {
    std::vector<int64_t> start(static_cast<size_t>(nr + 1), 0);
    for (int64_t p = 0; p < total; ++p) ++start[static_cast<size_t>(indices[p] + 1)];
    for (int64_t r = 0; r < nr; ++r) start[static_cast<size_t>(r + 1)] += start[static_cast<size_t>(r)];
    for (int64_t p = 0; p < total; ++p) {
      const int64_t o = start[static_cast<size_t>(indices[p])]++;
      order[static_cast<size_t>(o)] = p;
      order_ref[static_cast<size_t>(o)] = indices[p];
    }
  } else {
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(), [indices](int64_t a, int64_t b) { return indices[a] < indices[b]; });
    for (int64_t o = 0; o < total; ++o) order_ref[static_cast<size_t>(o)] = indices[order[static_cast<size_t>(o)]];
  }
  const cpu::RerankFn fn = cpu::rerank_for(opt.simd);
  int threads = cpu::thread_count(opt);
  if (total < 64) threads = 1;
#pragma omp parallel num_threads(threads)
  {
    int tid = 0, nt = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    const cpu::RerankTask t{queries, &refs, normalize_refs, order.data(), order_ref.data(),
                            total * tid / nt, total * (tid + 1) / nt, kc, scores};
    if (t.end > t.begin) fn(t);
  }
}

}  // namespace memlens
