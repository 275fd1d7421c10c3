// MoeDispatch kernels. Reference: `moe_dispatch` = `route` + routed experts in exporter/modeling/mlp.py.
//
//   routeKernel     one thread per token: sigmoid, group-limited top-k, weights; counts per expert
//   offsetsKernel   prefix sums: first sorted row of each expert, first GEMM tile of each expert
//   scatterKernel   sorted row -> (token, slot) assignment, grouping the rows of each expert
//   expertGemmKernel<up>    act  = relu(h W_up^T)^2 for the rows of each expert (only selected experts)
//   expertGemmKernel<down>  part = (act W_down^T) * weight, stored per (token, slot)
//   combineKernel   out[token] = sum over its k slots, in slot order (deterministic)
#include "../common/device.cuh"
#include "moe_dispatch_kernels.h"

namespace ndp {
namespace {

constexpr int kRouteThreads = 128;
constexpr int kGemmThreads = 256;
constexpr int kRowTile = 32;  // sorted rows per GEMM block
constexpr int kColTile = 64;  // output columns per GEMM block
constexpr int kDepthTile = 32;
constexpr int kColsPerThread = kColTile / 8;

struct Workspace {
  int* topIdx;     // [N*k] chosen expert of each assignment a = token*k + slot
  float* topW;     // [N*k] its weight
  int* counts;     // [X]
  int* fill;       // [X]
  int* offsets;    // [X+1] first sorted row of each expert
  int* tileStart;  // [X+1] first GEMM row tile of each expert
  int* perm;       // [N*k] sorted row -> assignment
  float* act;      // [N*k, I] by sorted row
  float* slotOut;  // [N*k, D] by assignment
};

size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

constexpr int kParts = 9;

size_t partSizes(MoeSizes const& s, size_t out[kParts]) {
  size_t const assignments = size_t(s.tokens) * s.topK;
  out[0] = aligned(sizeof(int) * assignments);
  out[1] = aligned(sizeof(float) * assignments);
  out[2] = aligned(sizeof(int) * s.experts);
  out[3] = out[2];
  out[4] = aligned(sizeof(int) * (s.experts + 1));
  out[5] = out[4];
  out[6] = out[0];
  out[7] = aligned(sizeof(float) * assignments * s.inter);
  out[8] = aligned(sizeof(float) * assignments * s.hidden);
  size_t total = 0;
  for (int i = 0; i < kParts; ++i) {
    total += out[i];
  }
  return total;
}

Workspace carve(void* base, MoeSizes const& s) {
  size_t parts[kParts];
  partSizes(s, parts);
  char* p = static_cast<char*>(base);
  char* at[kParts];
  for (int i = 0; i < kParts; ++i) {
    at[i] = p;
    p += parts[i];
  }
  return Workspace{reinterpret_cast<int*>(at[0]), reinterpret_cast<float*>(at[1]), reinterpret_cast<int*>(at[2]),
                   reinterpret_cast<int*>(at[3]), reinterpret_cast<int*>(at[4]),   reinterpret_cast<int*>(at[5]),
                   reinterpret_cast<int*>(at[6]), reinterpret_cast<float*>(at[7]), reinterpret_cast<float*>(at[8])};
}

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

//! Routing of one token. Ties go to the lower index (torch.topk leaves them unspecified).
__global__ void __launch_bounds__(kRouteThreads)
    routeKernel(MoeSizes s, float const* logits, float const* bias, int* topIdx, float* topW, int* counts) {
  int64_t const n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= s.tokens) {
    return;
  }
  float const* row = logits + n * s.experts;
  int const perGroup = s.experts / s.nGroup;
  uint64_t keep = ~uint64_t(0);
  if (s.nGroup > 1) {
    // a group's score: the sum of its two best biased scores; keep the best topk_group groups
    float groupScore[kMoeMaxGroups];
    for (int g = 0; g < s.nGroup; ++g) {
      float best = -INFINITY;
      float second = -INFINITY;
      for (int e = g * perGroup; e < (g + 1) * perGroup; ++e) {
        float const v = sigmoid(row[e]) + bias[e];
        if (v > best) {
          second = best;
          best = v;
        } else if (v > second) {
          second = v;
        }
      }
      groupScore[g] = best + second;
    }
    keep = 0;
    for (int i = 0; i < s.topkGroup; ++i) {
      int bestG = -1;
      float best = -INFINITY;
      for (int g = 0; g < s.nGroup; ++g) {
        if (!((keep >> g) & 1u) && (bestG < 0 || groupScore[g] > best)) {
          best = groupScore[g];
          bestG = g;
        }
      }
      keep |= uint64_t(1) << bestG;
    }
  }
  int chosen[kMoeMaxTopK];
  float weight[kMoeMaxTopK];
  float sum = 0.f;
  for (int i = 0; i < s.topK; ++i) {
    int bestE = -1;
    float best = -INFINITY;
    for (int e = 0; e < s.experts; ++e) {
      if (!((keep >> (e / perGroup)) & 1u)) {
        continue;
      }
      bool taken = false;
      for (int j = 0; j < i; ++j) {
        taken = taken || chosen[j] == e;
      }
      float const v = sigmoid(row[e]) + bias[e];
      if (!taken && (bestE < 0 || v > best)) {
        best = v;
        bestE = e;
      }
    }
    chosen[i] = bestE;
    weight[i] = sigmoid(row[bestE]);  // the weight uses the un-biased score
    sum += weight[i];
  }
  for (int i = 0; i < s.topK; ++i) {
    float const w = s.normTopkProb ? weight[i] / (sum + 1e-20f) : weight[i];
    topIdx[n * s.topK + i] = chosen[i];
    topW[n * s.topK + i] = w * s.scaling;
    atomicAdd(&counts[chosen[i]], 1);
  }
}

__global__ void offsetsKernel(MoeSizes s, int const* counts, int* offsets, int* tileStart) {
  if (threadIdx.x != 0 || blockIdx.x != 0) {
    return;
  }
  offsets[0] = 0;
  tileStart[0] = 0;
  for (int e = 0; e < s.experts; ++e) {
    offsets[e + 1] = offsets[e] + counts[e];
    tileStart[e + 1] = tileStart[e] + (counts[e] + kRowTile - 1) / kRowTile;
  }
}

__global__ void __launch_bounds__(kRouteThreads) scatterKernel(MoeSizes s, int const* topIdx, int const* offsets, int* fill, int* perm) {
  int64_t const a = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= s.tokens * s.topK) {
    return;
  }
  int const e = topIdx[a];
  perm[offsets[e] + atomicAdd(&fill[e], 1)] = int(a);
}

//! The expert owning GEMM row tile `tile`: the last e with tileStart[e] <= tile.
__device__ __forceinline__ int expertOfTile(int const* tileStart, int experts, int tile) {
  int lo = 0;
  int hi = experts - 1;
  while (lo < hi) {
    int const mid = (lo + hi + 1) / 2;
    if (tileStart[mid] <= tile) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

//! Grouped GEMM over the sorted rows. kUp: A = h[token of row] ([D] wide), W = up[e] ([I, D]),
//! result relu(.)^2 into act[row]. Down: A = act[row] ([I] wide), W = down[e] ([D, I]),
//! result * weight into slotOut[assignment]. Intermediate roundings to T follow the reference.
template <typename T, bool kUp>
__global__ void __launch_bounds__(kGemmThreads)
    expertGemmKernel(MoeSizes s, T const* h, T const* weights, int const* offsets, int const* tileStart, int const* perm, float const* topW,
                     float* act, float* slotOut) {
  int const tile = blockIdx.x;
  if (tile >= tileStart[s.experts]) {
    return;  // the grid is sized for the worst case
  }
  int const e = expertOfTile(tileStart, s.experts, tile);
  int const rowBase = offsets[e] + (tile - tileStart[e]) * kRowTile;
  int const rowEnd = offsets[e + 1];
  int const depth = kUp ? s.hidden : s.inter;  // K of the GEMM
  int const width = kUp ? s.inter : s.hidden;  // output columns
  int const n0 = blockIdx.y * kColTile;
  T const* w = weights + int64_t(e) * width * depth;

  __shared__ float as[kRowTile][kDepthTile + 1];
  __shared__ float ws[kColTile][kDepthTile + 1];
  int const r = threadIdx.x / 8;
  int const cp = threadIdx.x % 8;
  float acc[kColsPerThread];
  for (int j = 0; j < kColsPerThread; ++j) {
    acc[j] = 0.f;
  }
  for (int k0 = 0; k0 < depth; k0 += kDepthTile) {
    for (int i = threadIdx.x; i < kRowTile * kDepthTile; i += blockDim.x) {
      int const row = rowBase + i / kDepthTile;
      int const k = k0 + i % kDepthTile;
      float v = 0.f;
      if (row < rowEnd && k < depth) {
        v = kUp ? toFloat(h[int64_t(perm[row] / s.topK) * s.hidden + k]) : act[int64_t(row) * s.inter + k];
      }
      as[i / kDepthTile][i % kDepthTile] = v;
    }
    for (int i = threadIdx.x; i < kColTile * kDepthTile; i += blockDim.x) {
      int const col = n0 + i / kDepthTile;
      int const k = k0 + i % kDepthTile;
      ws[i / kDepthTile][i % kDepthTile] = col < width && k < depth ? toFloat(w[int64_t(col) * depth + k]) : 0.f;
    }
    __syncthreads();
    for (int k = 0; k < kDepthTile; ++k) {
      float const av = as[r][k];
      for (int j = 0; j < kColsPerThread; ++j) {
        acc[j] += av * ws[cp + 8 * j][k];
      }
    }
    __syncthreads();
  }
  int const row = rowBase + r;
  if (row >= rowEnd) {
    return;
  }
  for (int j = 0; j < kColsPerThread; ++j) {
    int const col = n0 + cp + 8 * j;
    if (col >= width) {
      continue;
    }
    float const v = roundTo<T>(acc[j]);  // F.linear's output in T
    if (kUp) {
      float const relu = fmaxf(v, 0.f);
      act[int64_t(row) * s.inter + col] = roundTo<T>(relu * relu);
    } else {
      int const a = perm[row];
      slotOut[int64_t(a) * s.hidden + col] = v * topW[a];
    }
  }
}

__global__ void __launch_bounds__(kRouteThreads) combineKernel(MoeSizes s, float const* slotOut, float* out) {
  int64_t const i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= s.tokens * s.hidden) {
    return;
  }
  int64_t const n = i / s.hidden;
  int64_t const d = i % s.hidden;
  float sum = 0.f;
  for (int k = 0; k < s.topK; ++k) {
    sum += slotOut[(n * s.topK + k) * s.hidden + d];
  }
  out[i] = sum;
}

template <typename T>
cudaError_t enqueueTyped(MoeSizes const& s, MoeBuffers const& io, void* workspace, cudaStream_t stream) {
  if (s.tokens == 0) {
    return cudaSuccess;
  }
  Workspace const ws = carve(workspace, s);
  int64_t const assignments = s.tokens * s.topK;
  cudaError_t status = ndpMemsetAsync(ws.counts, 0, sizeof(int) * s.experts, stream);
  if (status == cudaSuccess) {
    status = ndpMemsetAsync(ws.fill, 0, sizeof(int) * s.experts, stream);
  }
  if (status != cudaSuccess) {
    return status;
  }
  NDP_LAUNCH(routeKernel, dim3(unsigned(ceilDiv(s.tokens, kRouteThreads))), dim3(kRouteThreads), stream, s, io.logits, io.bias, ws.topIdx,
             ws.topW, ws.counts);
  NDP_LAUNCH(offsetsKernel, dim3(1), dim3(32), stream, s, ws.counts, ws.offsets, ws.tileStart);
  NDP_LAUNCH(scatterKernel, dim3(unsigned(ceilDiv(assignments, kRouteThreads))), dim3(kRouteThreads), stream, s, ws.topIdx, ws.offsets,
             ws.fill, ws.perm);
  // Each expert adds at most one partial tile: an upper bound of the tiles, known on the host.
  int64_t const maxTiles = ceilDiv(assignments, kRowTile) + (assignments < s.experts ? assignments : s.experts);
  T const* h = static_cast<T const*>(io.h);
  auto* const upKernel = expertGemmKernel<T, true>;  // named: a template-id with a comma cannot be a macro argument
  auto* const downKernel = expertGemmKernel<T, false>;
  NDP_LAUNCH(upKernel, dim3(unsigned(maxTiles), unsigned(ceilDiv(s.inter, kColTile))), dim3(kGemmThreads), stream, s, h,
             static_cast<T const*>(io.up), ws.offsets, ws.tileStart, ws.perm, ws.topW, ws.act, ws.slotOut);
  NDP_LAUNCH(downKernel, dim3(unsigned(maxTiles), unsigned(ceilDiv(s.hidden, kColTile))), dim3(kGemmThreads), stream, s, h,
             static_cast<T const*>(io.down), ws.offsets, ws.tileStart, ws.perm, ws.topW, ws.act, ws.slotOut);
  NDP_LAUNCH(combineKernel, dim3(unsigned(ceilDiv(s.tokens * s.hidden, kRouteThreads))), dim3(kRouteThreads), stream, s, ws.slotOut,
             io.out);
  return ndpGetLastError();
}

}  // namespace

size_t moeWorkspaceBytes(MoeSizes const& sizes) {
  size_t parts[kParts];
  return partSizes(sizes, parts);
}

cudaError_t moeEnqueue(ActivationType type, MoeSizes const& sizes, MoeBuffers const& buffers, void* workspace, cudaStream_t stream) {
  return withActivationType(type, [&](auto zero) { return enqueueTyped<decltype(zero)>(sizes, buffers, workspace, stream); });
}

}  // namespace ndp
