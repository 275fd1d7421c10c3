// CPU emulation of the small part of CUDA our kernels use, so that CI (no GPU) runs the very kernels
// that ship, through the plugins' enqueue, against the torch references.
//
// Each thread block runs on one OS thread; its CUDA threads are fibers (ucontext) that switch at
// __syncthreads() and at warp shuffles. __syncthreads() is a real barrier: a fiber waiting there is
// resumed only once every live fiber of the block waits there. A shuffle is two "steps" (write own
// value, then read the partner's), which lanes of a warp take in lockstep; kernels therefore call
// shuffles with whole warps converged, as CUDA requires anyway. __shared__ becomes `static`: blocks
// run one after another, so one copy per kernel is exactly the shared-memory semantics.
// Device memory is host memory; a stream is ignored and every launch completes before it returns.
#pragma once

#include <cuda_runtime_api.h>  // dim3, cudaStream_t, cudaError_t only: nothing from the runtime is called

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using std::max;  // CUDA's device min/max
using std::min;

namespace ndp_emu {

struct ThreadContext {
  uint3 threadIdx;
  uint3 blockIdx;
  dim3 blockDim;
  dim3 gridDim;
};

extern thread_local ThreadContext const* gContext;

//! Runs `body` once for every thread of every block of the grid.
void launch(dim3 grid, dim3 block, std::function<void()> const& body);

void syncThreads();

//! One lockstep step of a warp-level exchange: returns after every live fiber has taken it.
void warpStep();

//! Per-thread slot used by shuffles, indexed by the flat thread index.
double& exchangeSlot(uint32_t flatThread);

template <typename V>
V shflXor(V value, int laneMask) {
  ThreadContext const& c = *gContext;
  uint32_t const tid = c.threadIdx.x + c.blockDim.x * (c.threadIdx.y + c.blockDim.y * c.threadIdx.z);
  exchangeSlot(tid) = static_cast<double>(value);
  warpStep();
  V const other = static_cast<V>(exchangeSlot(tid ^ static_cast<uint32_t>(laneMask)));
  warpStep();  // nobody overwrites its slot before every lane has read
  return other;
}

template <typename V>
V atomicAddEmu(V* address, V value) {
  V const old = *address;  // fibers switch only at barriers, so this is atomic
  *address = old + value;
  return old;
}

}  // namespace ndp_emu

#define threadIdx (::ndp_emu::gContext->threadIdx)
#define blockIdx (::ndp_emu::gContext->blockIdx)
#define blockDim (::ndp_emu::gContext->blockDim)
#define gridDim (::ndp_emu::gContext->gridDim)
#define __syncthreads() ::ndp_emu::syncThreads()
#define __shfl_xor_sync(mask, value, laneMask) ::ndp_emu::shflXor((value), (laneMask))
#define atomicAdd(address, value) ::ndp_emu::atomicAddEmu((address), (value))

#define NDP_LAUNCH(kernel, grid, block, stream, ...) ::ndp_emu::launch((grid), (block), [&]() { kernel(__VA_ARGS__); })

inline cudaError_t ndpMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}
inline cudaError_t ndpGetLastError() { return cudaSuccess; }
