#include "device.cuh"
#include "plugin_base.h"

namespace ndp {
char const* cudaErrorText(cudaError_t status) noexcept {
#ifdef NDP_EMULATE
  return status == cudaSuccess ? "no error" : "error in the CPU emulation";
#else
  return cudaGetErrorString(status);
#endif
}
}  // namespace ndp
