// Kernels of the Mamba2Core op (see contract.json for the contract, and
// exporter/modeling/mamba.py `mamba2_core` for the torch reference they reproduce).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../common/activation_type.h"

#ifdef __CUDACC__
#define NDP_HOST_DEVICE __host__ __device__
#else
#define NDP_HOST_DEVICE
#endif

namespace ndp {

// Limits the kernels are written for (equal to contract.json's, static_asserted in the plugin, which
// refuses larger values at createPlugin / configurePlugin).
constexpr int kMamba2MaxConvKernel = 8;
constexpr int kMamba2MaxHeadDim = 128;
constexpr int kMamba2MaxChunk = 256;

struct Mamba2Sizes {
  int batch;      // B
  int seqlen;     // T new tokens
  int channels;   // C = H*P + 2*G*S
  int kernel;     // K
  int heads;      // H
  int headDim;    // P
  int groups;     // G
  int stateSize;  // S
  int chunk;      // L
  float dtMin;
  float dtMax;

  NDP_HOST_DEVICE int numChunks() const { return (seqlen + chunk - 1) / chunk; }
};

//! Device pointers of one call. Inputs of type T (float, __half or __nv_bfloat16) are passed as void*.
struct Mamba2Buffers {
  void const* xbc;         // [B, T, C] T
  void const* dt;          // [B, T, H] T
  float const* mask;       // [B, T]
  void const* convState;   // [B, C, K-1] T
  float const* ssmState;   // [B, H, P, S]
  void const* convWeight;  // [C, K] T
  void const* convBias;    // [C] T
  void const* dtBias;      // [H] T
  void const* aLog;        // [H] T
  void const* d;           // [H] T
  float* y;                // [B, T, H*P]
  void* newConvState;      // [B, C, K-1] T
  float* newSsmState;      // [B, H, P, S]
};

//! Workspace bytes for `sizes` (batch and seqlen at their maxima).
size_t mamba2WorkspaceBytes(Mamba2Sizes const& sizes);

//! Enqueues the whole op on `stream`: conv, then the recurrent update (T == 1) or the chunked scan.
cudaError_t mamba2Enqueue(ActivationType type, Mamba2Sizes const& sizes, Mamba2Buffers const& buffers, void* workspace,
                          cudaStream_t stream);

}  // namespace ndp
