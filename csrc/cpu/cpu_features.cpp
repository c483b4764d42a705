// Run-time SIMD level: what the CPU (and the OS, which must save the wide register state)
// supports, capped by the ISA translation units this build compiled.
#include <cpuid.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

#include "memlens/topk.h"

// The build defines these to 1 for each ISA unit it compiled.
#ifndef MEMLENS_HAVE_AVX2
#define MEMLENS_HAVE_AVX2 0
#endif
#ifndef MEMLENS_HAVE_AVX512
#define MEMLENS_HAVE_AVX512 0
#endif
#ifndef MEMLENS_HAVE_AVX512BF16
#define MEMLENS_HAVE_AVX512BF16 0
#endif
#ifndef MEMLENS_HAVE_AMX
#define MEMLENS_HAVE_AMX 0
#endif

namespace memlens {
namespace {

// XGETBV without -mxsave: the baseline unit cannot use the intrinsic.
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// AMX needs the CPU (CPUID.7.0:EDX bits 24 AMX-TILE, 22 AMX-BF16, 25 AMX-INT8), the OS's XSAVE support of
// the tile state (XCR0 bits 17 XTILECFG, 18 XTILEDATA) and, on Linux, the process's permission
// to use the 8 KiB of tile data, requested once (arch_prctl ARCH_REQ_XCOMP_PERM); without it
// the first tile instruction faults. The permission covers every thread of the process.
bool amx_usable(uint64_t xcr0) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d & (1u << 24)) && (d & (1u << 22)) && (d & (1u << 25)))) return false;
  if ((xcr0 & 0x60000) != 0x60000) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

SimdLevel cpu_level() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return SimdLevel::scalar;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12),
             f16c = c & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) return SimdLevel::scalar;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return SimdLevel::scalar;  // XMM and YMM state enabled by the OS
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return SimdLevel::scalar;
  if (!(b & (1u << 5))) return SimdLevel::scalar;  // AVX2
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31)) &&
                      (xcr0 & 0xe6) == 0xe6;  // F, DQ, BW, VL; opmask + ZMM state enabled
  if (!avx512) return SimdLevel::avx2;
  const bool vnni = c & (1u << 11);
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return SimdLevel::avx512;
  const bool bf16 = a & (1u << 5);
  if (!(vnni && bf16)) return SimdLevel::avx512;
  return amx_usable(xcr0) ? SimdLevel::amx : SimdLevel::avx512_bf16;
}

}  // namespace

bool simd_compiled(SimdLevel level) {
  switch (level) {
    case SimdLevel::scalar:
      return true;
    case SimdLevel::avx2:
      return MEMLENS_HAVE_AVX2 == 1;
    case SimdLevel::avx512:
      return MEMLENS_HAVE_AVX512 == 1;
    case SimdLevel::avx512_bf16:
      return MEMLENS_HAVE_AVX512BF16 == 1;
    case SimdLevel::amx:
      return MEMLENS_HAVE_AMX == 1 && MEMLENS_HAVE_AVX512BF16 == 1;
  }
  return false;
}

SimdLevel detect_simd() {
  static const SimdLevel level = [] {
    int l = static_cast<int>(cpu_level());
    while (l > 0 && !simd_compiled(static_cast<SimdLevel>(l))) --l;
    return static_cast<SimdLevel>(l);
  }();
  return level;
}

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::scalar:
      return "scalar";
    case SimdLevel::avx2:
      return "avx2";
    case SimdLevel::avx512:
      return "avx512";
    case SimdLevel::avx512_bf16:
      return "avx512_bf16";
    case SimdLevel::amx:
      return "amx";
  }
  return "unknown";
}

}  // namespace memlens
