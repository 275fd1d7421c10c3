// Device-side vocabulary shared by every kernel. Kernels use only what this header provides, so the
// same source compiles with nvcc for the GPU and with a host C++ compiler for the CPU emulation
// (NDP_EMULATE, see emulator.h), which runs the kernels in CI where there is no GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "activation_type.h"

#ifdef NDP_EMULATE
#include "emulator.h"
#else
#include <cuda_runtime.h>
// kernel<<<grid, block, 0, stream>>>(args...), spelled so that a host compiler can parse it too.
#define NDP_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
inline cudaError_t ndpMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  return cudaMemsetAsync(ptr, value, bytes, stream);
}
inline cudaError_t ndpGetLastError() { return cudaGetLastError(); }
#endif

namespace ndp {

__device__ __forceinline__ float toFloat(float v) { return v; }
__device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float toFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

//! v rounded to T and back: reproduces the reference's intermediate casts to the model dtype.
template <typename T>
__device__ __forceinline__ float roundTo(float v) {
  return toFloat(fromFloat<T>(v));
}

//! torch.nn.functional.softplus (beta 1, threshold 20).
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

//! Sum over the 32 lanes of a warp; every lane gets the total. Call with the whole warp converged.
__device__ __forceinline__ float warpSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

//! Calls f(T{}) with the C++ type of `type` (float, __half, __nv_bfloat16): one switch for every launcher.
template <typename F>
cudaError_t withActivationType(ActivationType type, F&& f) {
  switch (type) {
    case ActivationType::kFLOAT:
      return f(float{});
    case ActivationType::kHALF:
      return f(__half{});
    case ActivationType::kBF16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace ndp
