// The inversion-step kernels built for the avx512 level (flags from the file name, CMakeLists.txt).
//
// GCC 12 flags the _mm512_undefined_*() operands inside its own multiply intrinsics as
// maybe-uninitialized (GCC bug 105593); the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "inversion_kernel.h"

namespace memlens::cpu {
const InvKernels inv_kernels_avx512 = {k_sample, k_loss, k_update};
}  // namespace memlens::cpu
