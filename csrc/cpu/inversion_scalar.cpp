// The inversion-step kernels built for the scalar level (flags from the file name, CMakeLists.txt).
#include "inversion_kernel.h"

namespace memlens::cpu {
const InvKernels inv_kernels_scalar = {k_sample, k_loss, k_update};
}  // namespace memlens::cpu
