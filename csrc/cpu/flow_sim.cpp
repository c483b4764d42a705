// Flow-field similarity on the CPU: validation, blocking, threading and the fixed-order reduction.
// The per-pixel arithmetic runs in the per-ISA kernels (flow_sim_<isa>.cpp), chosen from
// FlowOptions::simd.
//
// Work decomposition. The input is N x T frames of H x W vectors; gen[t] is needed by all N
// candidates of frame t. A task is (frame t, block of gen rows, range of candidates): the kernel
// prepares the block of gen rows once (residual, norm, mask: ~20 bytes a pixel, kept in cache)
// and streams each candidate's rows of that block past it, so memory traffic is one read of
// every candidate plus one read of gen per candidate range. Candidates are split into ranges only
// when frames x blocks alone give too few tasks for the team. Every task writes its own partial
// sums per candidate; they are reduced over blocks in a fixed order afterwards, so the result
// does not depend on the thread count or the schedule.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>  // sysconf

#ifdef _OPENMP
#include <omp.h>
#endif

#include "flow_sim_internal.h"
#include "memlens/topk.h"  // simd_compiled, simd_name

namespace memlens {
namespace cpu {
namespace {

// Gen pixels per block (all candidates stream past one block of prepared gen, ~20 bytes a pixel),
// by default; see default_block_pixels.
constexpr int64_t kDefaultBlockPixels = 65536;
constexpr int64_t kPreparedBytesPerPixel = 20;
constexpr int64_t kLargeL2Bytes = int64_t{2} << 20;

// The default block size, from the per-core L2 size the OS reports. Measured with 2 cores on
// 256 x 256 frames, N = 64, T = 15 (bench flow):
// - Zen 4 (1 MiB L2): whole frames (1.3 MB of prepared gen, in L3) beat blocks that fit L2
//   (16384 pixels: +20% time); each candidate is then read in long sequential runs;
// - a Xeon with 2 MiB L2 (AVX-512 FP16, AMX): blocks of a third of L2 (~35000 pixels, two per
//   frame) beat whole frames by 7% (float32) and 3% (float16): there gen re-read from L3 costs
//   more than the shorter candidate runs. 24576-32768 pixels were the best of 8192-65536.
// So: a third of L2 where L2 holds at least 2 MiB, whole frames (up to 65536 pixels) otherwise.
// Read once per process: sysconf asks CPUID, which traps to the hypervisor in a VM.
int64_t default_block_pixels() {
  static const int64_t pixels = [] {
    long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (l2 < kLargeL2Bytes) return kDefaultBlockPixels;
    return std::min<int64_t>(kDefaultBlockPixels, l2 / 3 / kPreparedBytesPerPixel);
  }();
  return pixels;
}
// With few (frame, block) units, candidates are split into ranges until there are at least
// this many tasks per thread (load balance).
constexpr int64_t kTasksPerThread = 4;
// Partial sums of one batch of frames are kept below this (more frames: several batches).
constexpr int64_t kPartialBudgetBytes = int64_t{64} << 20;
// Below this many candidate pixels a single thread is faster than waking a team.
constexpr int64_t kMinParallelPixels = int64_t{1} << 15;
// Half-width (relative) of the band around mu_min^2 where the float32 mask test defers to
// float64. The float32 |r|^2 of a residual accurate to 1 ulp is within ~4 ulp (2^-22) of the
// exact value; 2^-20 leaves a 4x margin. In the tiny regime (mu_min^2 below 2^-100) float32
// squares can underflow, so every nonzero vector with |r|^2 < 2^-100 is deferred too.
constexpr double kBand = 0x1p-20;
constexpr double kTinySquare = 0x1p-100;

struct AlignedFree {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t(64)); }
};
using Buffer = std::unique_ptr<char, AlignedFree>;

Buffer aligned_bytes(int64_t bytes) {
  return Buffer(static_cast<char*>(::operator new(static_cast<size_t>(std::max<int64_t>(bytes, 64)), std::align_val_t(64))));
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

FlowKernel kernel_for(SimdLevel level) {
  switch (level) {
    case SimdLevel::amx:
    case SimdLevel::avx512_bf16:
    case SimdLevel::avx512:
#if MEMLENS_HAVE_AVX512
      return flow_task_avx512;
#endif
      [[fallthrough]];
    case SimdLevel::avx2:
#if MEMLENS_HAVE_AVX2
      return flow_task_avx2;
#endif
      [[fallthrough]];
    case SimdLevel::scalar:
      break;
  }
  return flow_task_scalar;
}

float float_down(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) > x) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}
float float_up(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// The tasks of one batch of `units` (frame, block) units, in schedule order. Every unit of N
// candidates is one task, except where that would leave threads idle at the end of the dynamic
// schedule: T = 15 frames on 2 threads is 8 tasks for one thread and 7 for the other, 1/16 of the
// run lost. So with many units, the last (units mod threads) are split into `threads` candidate
// ranges each and scheduled last (each thread takes the same share of them); with few units,
// every unit is split into the fewest ranges giving >= kTasksPerThread tasks per thread and a
// multiple of the thread count. Candidate ranges cost one more preparation of the unit's gen rows
// each, but change no partial sum: a (candidate, frame, block) record is computed the same way
// whichever task holds it, so the result does not depend on the thread count.
std::vector<FlowTask> plan_tasks(int64_t units, int64_t blocks, int64_t n, int64_t threads) {
  std::vector<FlowTask> tasks;
  auto add = [&](int64_t u, int64_t ranges) {
    for (int64_t r = 0; r < ranges; ++r) tasks.push_back({u / blocks, u % blocks, n * r / ranges, n * (r + 1) / ranges});
  };
  const int64_t p = std::max<int64_t>(threads, 1), most = std::max<int64_t>(n, 1);
  if (p == 1 || n <= 1) {
    for (int64_t u = 0; u < units; ++u) add(u, 1);
  } else if (units < kTasksPerThread * p) {
    int64_t ranges = std::min((kTasksPerThread * p + units - 1) / units, most);
    while (ranges < most && (units * ranges) % p != 0) ++ranges;
    for (int64_t u = 0; u < units; ++u) add(u, ranges);
  } else {
    const int64_t whole = units - units % p;
    for (int64_t u = 0; u < units; ++u) add(u, u < whole ? 1 : std::min(p, most));
  }
  return tasks;
}

// The largest float64 s with sqrt(s) <= mu (sqrt correctly rounded, hence monotone), so that
// sqrt(s) > mu exactly when s > mask_square(mu). Starts from mu * mu and walks the few ulps to
// the boundary; mu * mu overflowing means no finite square is above it.
double mask_square(double mu) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  double s = mu * mu;
  if (std::isinf(s)) return std::numeric_limits<double>::max();
  while (s > 0 && std::sqrt(s) > mu) s = std::nextafter(s, 0.0);
  while (std::sqrt(std::nextafter(s, kInf)) <= mu) s = std::nextafter(s, kInf);
  return s;
}

void check_array(const FlowArray& a, const char* name, bool nonempty) {
  if (a.dtype != DType::f32 && a.dtype != DType::f16)
    throw std::invalid_argument(std::string(name) + " must be float32 or float16 (dtype code 0 or 1); got code " +
                                std::to_string(static_cast<int>(a.dtype)));
  if (nonempty && a.data == nullptr) throw std::invalid_argument(std::string(name) + " data pointer is null");
}

}  // namespace
}  // namespace cpu

void flow_similarity(const FlowArray& gen, const FlowArray& cands, const FlowShape& shape, double mu_min,
                     const double* gen_affine, const double* cand_affine, double* pair, double* gen_field,
                     double* cand_field, const FlowOptions& opt) {
  using namespace cpu;
  const int64_t N = shape.n, T = shape.t, H = shape.h, W = shape.w;
  if (N < 0 || T < 0 || H < 0 || W < 0)
    throw std::invalid_argument("shape (n, t, h, w) must be non-negative; got (" + std::to_string(N) + ", " +
                                std::to_string(T) + ", " + std::to_string(H) + ", " + std::to_string(W) + ")");
  if (!(std::isfinite(mu_min) && mu_min >= 0))
    throw std::invalid_argument("mu_min must be a finite number >= 0; got " + std::to_string(mu_min));
  if (opt.block_pixels < 0) throw std::invalid_argument("block_pixels must be >= 0");
  if (static_cast<int>(opt.simd) < 0 || static_cast<int>(opt.simd) > kMaxSimdLevel || !simd_compiled(opt.simd) ||
      static_cast<int>(opt.simd) > static_cast<int>(detect_simd()))
    throw std::invalid_argument(std::string("simd level ") + simd_name(opt.simd) + " is not available on this CPU/build");
  const bool frames = T > 0 && H > 0 && W > 0;
  check_array(gen, "gen", frames);
  check_array(cands, "cands", frames && N > 0);
  if ((N * T > 0 && (pair == nullptr || cand_field == nullptr)) || (T > 0 && gen_field == nullptr))
    throw std::invalid_argument("output pointers (pair, gen_field, cand_field) must not be null");
  std::fill(pair, pair + N * T * kPairStats, 0.0);
  std::fill(cand_field, cand_field + N * T * kFieldStats, 0.0);
  std::fill(gen_field, gen_field + T * kFieldStats, 0.0);
  if (!frames) return;

  FlowJob job{};
  job.gen = gen;
  job.cands = cands;
  job.shape = shape;
  job.mu_min = mu_min;
  job.gen_affine = gen_affine;
  job.cand_affine = N > 0 ? cand_affine : nullptr;
  const int64_t block_pixels = opt.block_pixels > 0 ? opt.block_pixels : default_block_pixels();
  job.rows_per_block = std::clamp<int64_t>(block_pixels / W, 1, H);
  job.blocks = (H + job.rows_per_block - 1) / job.rows_per_block;
  job.wpad = round_up(W, kPadPixels);

  // The grid, computed like the reference: x_j = (2j + 1) / W - 1 in float64.
  std::vector<double> xd(static_cast<size_t>(job.wpad), 0.0), yd(static_cast<size_t>(H));
  for (int64_t j = 0; j < W; ++j)
    xd[static_cast<size_t>(j)] = (2.0 * static_cast<double>(j) + 1.0) / static_cast<double>(W) - 1.0;
  for (int64_t i = 0; i < H; ++i)
    yd[static_cast<size_t>(i)] = (2.0 * static_cast<double>(i) + 1.0) / static_cast<double>(H) - 1.0;
  job.xd = xd.data();
  job.yd = yd.data();

  // The float32 mask test: |r|^2 > hi is in the mask, |r|^2 < lo is not, anything between is
  // recomputed in float64 (see kBand).
  const double mu2 = mu_min * mu_min;
  double lo = mu2 * (1 - kBand), hi = mu2 * (1 + kBand);
  if (lo < kTinySquare) lo = 0, hi = std::max(hi, kTinySquare);
  job.eps_mode = mu_min < kSmallMu ? kExactEps : mu_min < kLargeMu ? kFirstOrder : kNoEps;
  job.lo = float_down(lo);
  job.hi = float_up(hi);
  job.mask_sq = mask_square(mu_min);

  int threads = 1;
#ifdef _OPENMP
  threads = opt.num_threads > 0 ? opt.num_threads : omp_get_max_threads();
#endif
  if (static_cast<double>(std::max<int64_t>(N, 1)) * T * H * W < static_cast<double>(kMinParallelPixels)) threads = 1;

  // Frames per batch: bounds the partial sums.
  const int64_t per_frame = job.blocks * (N * kPartialStats + kFieldStats) * 8;
  const int64_t batch = std::clamp<int64_t>(kPartialBudgetBytes / per_frame, 1, T);
  std::vector<double> partial(static_cast<size_t>(batch * job.blocks * N * kPartialStats));
  std::vector<double> gen_partial(static_cast<size_t>(batch * job.blocks * kFieldStats));

  // Per-thread scratch, 64-byte aligned pieces.
  const int64_t gen_bytes = round_up(job.rows_per_block * gen_row_floats(job.wpad) * 4, 64);
  const int64_t row_bytes = round_up(kGenPlanes * job.wpad * 4, 64);
  const int64_t rowd_bytes = round_up(kRowPlanes * job.wpad * 8, 64);
  const int64_t acc_bytes = round_up(kPartialStats * kMaxLanes * 8, 64);
  const int64_t per_thread = gen_bytes + row_bytes + rowd_bytes + acc_bytes;
  Buffer scratch = aligned_bytes(per_thread * threads);
  const FlowKernel kernel = kernel_for(opt.simd);

  for (int64_t t0 = 0; t0 < T; t0 += batch) {
    const int64_t nt = std::min(batch, T - t0);
    FlowJob bj = job;  // this batch's frames, renumbered from 0 into the partial buffers
    bj.shape.t = nt;
    bj.gen.data = static_cast<const char*>(gen.data) + t0 * gen.stride_t * (gen.dtype == DType::f16 ? 2 : 4);
    if (N > 0) bj.cands.data = static_cast<const char*>(cands.data) + t0 * cands.stride_t * (cands.dtype == DType::f16 ? 2 : 4);
    // Affine rows are indexed (n * T + t) * 6 by the kernels; keep T and shift t via pointers.
    std::vector<double> cand_aff;
    if (job.cand_affine) {
      cand_aff.resize(static_cast<size_t>(N * nt * 6));
      for (int64_t n = 0; n < N; ++n)
        std::copy(cand_affine + (n * T + t0) * 6, cand_affine + (n * T + t0 + nt) * 6, cand_aff.begin() + n * nt * 6);
      bj.cand_affine = cand_aff.data();
    }
    if (gen_affine) bj.gen_affine = gen_affine + t0 * 6;
    bj.partial = partial.data();
    bj.gen_partial = gen_partial.data();
    const std::vector<FlowTask> tasks = plan_tasks(nt * job.blocks, job.blocks, N, threads);
    const int64_t ntasks = static_cast<int64_t>(tasks.size());
    const int team = static_cast<int>(std::min<int64_t>(threads, ntasks));

#pragma omp parallel num_threads(team)
    {
      int tid = 0;
#ifdef _OPENMP
      tid = omp_get_thread_num();
#endif
      char* base = scratch.get() + tid * per_thread;
      const FlowScratch s{reinterpret_cast<float*>(base), reinterpret_cast<float*>(base + gen_bytes),
                          reinterpret_cast<double*>(base + gen_bytes + row_bytes),
                          reinterpret_cast<double*>(base + gen_bytes + row_bytes + rowd_bytes)};
#pragma omp for schedule(dynamic, 1)
      for (int64_t k = 0; k < ntasks; ++k) kernel(bj, tasks[static_cast<size_t>(k)], s);
    }

    for (int64_t t = 0; t < nt; ++t) {
      for (int64_t n = 0; n < N; ++n) {
        double sum[kPartialStats] = {};
        for (int64_t b = 0; b < job.blocks; ++b) {
          const double* p = partial.data() + ((t * job.blocks + b) * N + n) * kPartialStats;
          for (int k = 0; k < kPartialStats; ++k) sum[k] += p[k];
        }
        std::copy(sum, sum + kPairStats, pair + (n * T + t0 + t) * kPairStats);
        std::copy(sum + kPairStats, sum + kPartialStats, cand_field + (n * T + t0 + t) * kFieldStats);
      }
      for (int64_t b = 0; b < job.blocks; ++b)
        for (int k = 0; k < kFieldStats; ++k)
          gen_field[(t0 + t) * kFieldStats + k] += gen_partial[static_cast<size_t>((t * job.blocks + b) * kFieldStats + k)];
    }
  }
}

}  // namespace memlens
