// Kernels of the MoeDispatch op (contract: contract.json; torch reference: `moe_dispatch`
// in exporter/modeling/mlp.py): routing on the GPU, then a grouped GEMM over only the selected
// (token, expert) pairs, then a deterministic weighted combine.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../common/activation_type.h"

namespace ndp {

// Limits the kernels are written for (equal to contract.json's, static_asserted in the plugin).
constexpr int kMoeMaxTopK = 16;
constexpr int kMoeMaxGroups = 64;

struct MoeSizes {
  int64_t tokens;  // N
  int experts;     // X
  int inter;       // I, expert width
  int hidden;      // D, expert input width
  int topK;
  int nGroup;
  int topkGroup;
  bool normTopkProb;
  float scaling;
};

struct MoeBuffers {
  void const* h;        // [N, D] T
  float const* logits;  // [N, X]
  float const* bias;    // [X] correction bias (choice only)
  void const* up;       // [X, I, D] T
  void const* down;     // [X, D, I] T
  float* out;           // [N, D]
};

size_t moeWorkspaceBytes(MoeSizes const& sizes);

cudaError_t moeEnqueue(ActivationType type, MoeSizes const& sizes, MoeBuffers const& buffers, void* workspace, cudaStream_t stream);

}  // namespace ndp
