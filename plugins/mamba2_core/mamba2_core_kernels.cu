// Mamba2Core kernels. Reference: `mamba2_core` in exporter/modeling/mamba.py; the comments name the
// reference's steps so the two can be read side by side.
//
//   convKernel          causal depthwise conv + SiLU over [conv_state, xbc * mask], new conv state
//   decodeKernel        T == 1: fused recurrent update, state read once and written once
//   chunkDtKernel       T > 1: dt = clamp(softplus(dt + dt_bias)) * mask, cumsum(dt * A) per chunk
//   chunkStateKernel    each chunk's own contribution to the state at its end
//   statePassingKernel  sequential over chunks: the state entering each chunk, and the final state
//   chunkOutputKernel   within-chunk (C B^T * decay) x  +  decay * C . entering state  +  D x
#include "../common/device.cuh"
#include "mamba2_core_kernels.h"

namespace ndp {
namespace {

constexpr int kConvThreads = 128;
constexpr int kDecodeWarps = 4;
constexpr int kScanThreads = 256;
constexpr int kTile = 32;                        // rows and columns of the chunked scan's shared-memory tiles
constexpr int kOutCols = kMamba2MaxHeadDim / 8;  // head-dim columns per thread in chunkOutputKernel

//! fp32 scratch carved out of the plugin workspace.
struct Workspace {
  float* xbcAct;  // [B, T, C] conv output (masked, rounded to T like the reference)
  float* dtp;     // [B, H, nc*L] processed dt, 0 past the end
  float* cum;     // [B, H, nc*L] cumsum of dt*A within each chunk
  float* states;  // [B, nc, H, P, S] chunk states, then the state entering each chunk
};

size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

size_t sizes4(Mamba2Sizes const& s, size_t out[4]) {
  int64_t const padded = int64_t(s.numChunks()) * s.chunk;
  out[0] = aligned(sizeof(float) * s.batch * s.seqlen * s.channels);
  out[1] = aligned(sizeof(float) * s.batch * s.heads * padded);
  out[2] = out[1];
  out[3] = aligned(sizeof(float) * s.batch * s.numChunks() * s.heads * s.headDim * s.stateSize);
  return out[0] + out[1] + out[2] + out[3];
}

Workspace carve(void* base, Mamba2Sizes const& s) {
  size_t parts[4];
  sizes4(s, parts);
  char* p = static_cast<char*>(base);
  Workspace w;
  w.xbcAct = reinterpret_cast<float*>(p);
  w.dtp = reinterpret_cast<float*>(p + parts[0]);
  w.cum = reinterpret_cast<float*>(p + parts[0] + parts[1]);
  w.states = reinterpret_cast<float*>(p + parts[0] + parts[1] + parts[2]);
  return w;
}

//! clamp(softplus(dt + dt_bias), dt_min, dt_max) * mask for token `row` (= b*T + t) and head h.
template <typename T>
__device__ __forceinline__ float headDt(Mamba2Sizes const& s, T const* dtRaw, T const* dtBias, float const* mask, int64_t row, int h) {
  float const v = softplus(toFloat(dtRaw[row * s.heads + h]) + toFloat(dtBias[h]));
  return fminf(fmaxf(v, s.dtMin), s.dtMax) * mask[row];
}

template <typename T>
__global__ void __launch_bounds__(kConvThreads) convKernel(Mamba2Sizes s, T const* xbc, float const* mask, T const* convState,
                                                           T const* weight, T const* bias, float* xbcAct, T* newConvState) {
  int const c = blockIdx.x * blockDim.x + threadIdx.x;
  int const b = blockIdx.y;
  if (c >= s.channels) {
    return;
  }
  int const km1 = s.kernel - 1;
  float window[kMamba2MaxConvKernel];  // the K-1 previous inputs, oldest first
  float w[kMamba2MaxConvKernel];
  T const* state = convState + (int64_t(b) * s.channels + c) * km1;
  for (int j = 0; j < km1; ++j) {
    window[j] = toFloat(state[j]);
  }
  for (int k = 0; k < s.kernel; ++k) {
    w[k] = toFloat(weight[int64_t(c) * s.kernel + k]);
  }
  float const bv = toFloat(bias[c]);
  for (int t = 0; t < s.seqlen; ++t) {
    int64_t const row = int64_t(b) * s.seqlen + t;
    float const m = mask[row];
    float const in = roundTo<T>(toFloat(xbc[row * s.channels + c]) * m);  // xbc * mask, in T
    float acc = bv;
    for (int j = 0; j < km1; ++j) {
      acc += w[j] * window[j];
    }
    acc += w[km1] * in;
    for (int j = 0; j + 1 < km1; ++j) {
      window[j] = window[j + 1];
    }
    window[km1 - 1] = in;
    xbcAct[row * s.channels + c] = roundTo<T>(silu(acc)) * m;  // silu(conv).to(T) * mask
  }
  T* out = newConvState + (int64_t(b) * s.channels + c) * km1;
  for (int j = 0; j < km1; ++j) {
    out[j] = fromFloat<T>(window[j]);
  }
}

//! One warp per (b, h, p) row of the state: h' = exp(dt*A) h + (dt x) B ; y = h' . C + D x.
template <typename T>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    decodeKernel(Mamba2Sizes s, float const* xbcAct, T const* dtRaw, float const* mask, float const* ssmIn, T const* dtBias, T const* aLog,
                 T const* dSkip, float* y, float* ssmOut) {
  int const warp = threadIdx.x / 32;
  int const lane = threadIdx.x % 32;
  int const p = blockIdx.x * kDecodeWarps + warp;
  int const h = blockIdx.y;
  int const b = blockIdx.z;
  if (p >= s.headDim) {
    return;  // whole warp
  }
  int const g = h / (s.heads / s.groups);
  float const dt = headDt(s, dtRaw, dtBias, mask, b, h);
  float const decay = expf(dt * -expf(toFloat(aLog[h])));
  float const* row = xbcAct + int64_t(b) * s.channels;
  float const x = row[h * s.headDim + p];
  float const dtx = dt * x;
  float const* bv = row + s.heads * s.headDim + g * s.stateSize;
  float const* cv = bv + s.groups * s.stateSize;
  int64_t const offset = ((int64_t(b) * s.heads + h) * s.headDim + p) * s.stateSize;
  float acc = 0.f;
#pragma unroll 4
  for (int n = lane; n < s.stateSize; n += 32) {
    float const state = ssmIn[offset + n] * decay + dtx * bv[n];
    ssmOut[offset + n] = state;
    acc += state * cv[n];
  }
  acc = warpSum(acc);
  if (lane == 0) {
    y[(int64_t(b) * s.heads + h) * s.headDim + p] = acc + toFloat(dSkip[h]) * x;
  }
}

template <typename T>
__global__ void __launch_bounds__(kScanThreads)
    chunkDtKernel(Mamba2Sizes s, T const* dtRaw, T const* dtBias, float const* mask, T const* aLog, float* dtp, float* cum) {
  int const c = blockIdx.x;
  int const h = blockIdx.y;
  int const b = blockIdx.z;
  __shared__ float dtA[kMamba2MaxChunk];
  float const a = -expf(toFloat(aLog[h]));
  int64_t const base = (int64_t(b) * s.heads + h) * s.numChunks() * s.chunk + int64_t(c) * s.chunk;
  for (int l = threadIdx.x; l < s.chunk; l += blockDim.x) {
    int const t = c * s.chunk + l;
    float const v = t < s.seqlen ? headDt(s, dtRaw, dtBias, mask, int64_t(b) * s.seqlen + t, h) : 0.f;
    dtp[base + l] = v;
    dtA[l] = v * a;
  }
  __syncthreads();
  if (threadIdx.x == 0)  // L adds: not worth a parallel scan next to the other kernels
  {
    float run = 0.f;
    for (int l = 0; l < s.chunk; ++l) {
      run += dtA[l];
      cum[base + l] = run;
    }
  }
}

//! Pointer to row t (global time) of batch b in the conv output, or nullptr past the end.
__device__ __forceinline__ float const* actRow(Mamba2Sizes const& s, float const* xbcAct, int b, int t) {
  return t < s.seqlen ? xbcAct + (int64_t(b) * s.seqlen + t) * s.channels : nullptr;
}

//! states[b, c, h] = sum_l (x_l * exp(cum_end - cum_l) * dt_l) (outer) B_l   ([P, S] per block)
__global__ void __launch_bounds__(kScanThreads)
    chunkStateKernel(Mamba2Sizes s, float const* xbcAct, float const* dtp, float const* cum, float* states) {
  int const c = blockIdx.x;
  int const h = blockIdx.y;
  int const b = blockIdx.z;
  int const g = h / (s.heads / s.groups);
  int const nc = s.numChunks();
  int64_t const dtBase = (int64_t(b) * s.heads + h) * nc * s.chunk + int64_t(c) * s.chunk;
  float const cumEnd = cum[dtBase + s.chunk - 1];
  __shared__ float xs[kTile][kTile + 1];  // [l][p], x scaled by decay-to-end * dt
  __shared__ float bs[kTile][kTile + 1];  // [l][n]
  int const tp = threadIdx.x / 8;
  int const tn = (threadIdx.x % 8) * 4;
  float* out = states + ((int64_t(b) * nc + c) * s.heads + h) * s.headDim * s.stateSize;
  for (int p0 = 0; p0 < s.headDim; p0 += kTile) {
    for (int n0 = 0; n0 < s.stateSize; n0 += kTile) {
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      for (int l0 = 0; l0 < s.chunk; l0 += kTile) {
        for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
          int const l = e / kTile;
          int const j = e % kTile;
          int const lc = l0 + l;
          float const* row = lc < s.chunk ? actRow(s, xbcAct, b, c * s.chunk + lc) : nullptr;
          float const w = row != nullptr ? expf(cumEnd - cum[dtBase + lc]) * dtp[dtBase + lc] : 0.f;
          xs[l][j] = row != nullptr && p0 + j < s.headDim ? row[h * s.headDim + p0 + j] * w : 0.f;
          bs[l][j] = row != nullptr && n0 + j < s.stateSize ? row[s.heads * s.headDim + g * s.stateSize + n0 + j] : 0.f;
        }
        __syncthreads();
        for (int l = 0; l < kTile; ++l) {
          float const xv = xs[l][tp];
          for (int q = 0; q < 4; ++q) {
            acc[q] += xv * bs[l][tn + q];
          }
        }
        __syncthreads();
      }
      for (int q = 0; q < 4; ++q) {
        int const p = p0 + tp;
        int const n = n0 + tn + q;
        if (p < s.headDim && n < s.stateSize) {
          out[int64_t(p) * s.stateSize + n] = acc[q];
        }
      }
    }
  }
}

//! One thread per state element, sequential over chunks: entering_c = h; h = exp(sum_c dt*A) h + own_c.
__global__ void __launch_bounds__(kScanThreads)
    statePassingKernel(Mamba2Sizes s, float const* cum, float const* ssmIn, float* states, float* ssmOut) {
  int64_t const ps = int64_t(s.headDim) * s.stateSize;
  int64_t const e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int const h = blockIdx.y;
  int const b = blockIdx.z;
  if (e >= ps) {
    return;
  }
  int const nc = s.numChunks();
  int64_t const bh = int64_t(b) * s.heads + h;
  float state = ssmIn[bh * ps + e];
  for (int c = 0; c < nc; ++c) {
    float* slot = states + ((int64_t(b) * nc + c) * s.heads + h) * ps + e;
    float const own = *slot;
    *slot = state;
    float const chunkDecay = expf(cum[bh * nc * s.chunk + int64_t(c) * s.chunk + s.chunk - 1]);
    state = chunkDecay * state + own;
  }
  ssmOut[bh * ps + e] = state;
}

//! Rows [r0, r0+32) of chunk c for head h: y = (C B^T * exp(cum_t - cum_s) * dt_s, causal) x
//!                                          + exp(cum_t) C . entering  + D x
template <typename T>
__global__ void __launch_bounds__(kScanThreads) chunkOutputKernel(Mamba2Sizes s, float const* xbcAct, float const* dtp, float const* cum,
                                                                  float const* states, T const* dSkip, float* y) {
  int const rowTiles = (s.chunk + kTile - 1) / kTile;
  int const c = blockIdx.x / rowTiles;
  int const r0 = (blockIdx.x % rowTiles) * kTile;
  int const h = blockIdx.y;
  int const b = blockIdx.z;
  int const g = h / (s.heads / s.groups);
  int const nc = s.numChunks();
  int const P = s.headDim;
  int const S = s.stateSize;
  int64_t const dtBase = (int64_t(b) * s.heads + h) * nc * s.chunk + int64_t(c) * s.chunk;
  int const bOffset = s.heads * P + g * S;  // B of group g within a conv-output row
  int const cOffset = bOffset + s.groups * S;

  __shared__ float cs[kTile][kTile + 1];              // C[t][n]
  __shared__ float bs[kTile][kTile + 1];              // B[s][n]
  __shared__ float gs[kTile][kTile + 1];              // scaled, masked C.B for [t][s]
  __shared__ float xs[kTile][kMamba2MaxHeadDim + 1];  // x[s][p]
  __shared__ float es[kMamba2MaxHeadDim][kTile + 1];  // entering state [p][n]
  __shared__ float cumRow[kTile];

  int const tr = threadIdx.x / 8;  // this thread's row in the tile
  int const tc = threadIdx.x % 8;  // its column phase: p = tc + 8j, and G columns 4tc..4tc+3
  int const lr = r0 + tr;          // row within the chunk
  float acc[kOutCols];
  float accOff[kOutCols];
  for (int j = 0; j < kOutCols; ++j) {
    acc[j] = 0.f;
    accOff[j] = 0.f;
  }
  if (threadIdx.x < kTile) {
    cumRow[threadIdx.x] = r0 + int(threadIdx.x) < s.chunk ? cum[dtBase + r0 + threadIdx.x] : 0.f;
  }
  __syncthreads();

  // Within the chunk: causal, so only s tiles up to the end of this row tile.
  int const rowsEnd = min(r0 + kTile, s.chunk);
  for (int s0 = 0; s0 < rowsEnd; s0 += kTile) {
    float gacc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int n0 = 0; n0 < S; n0 += kTile) {
      for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
        int const i = e / kTile;
        int const j = e % kTile;
        float const* rowT = r0 + i < s.chunk ? actRow(s, xbcAct, b, c * s.chunk + r0 + i) : nullptr;
        float const* rowS = s0 + i < s.chunk ? actRow(s, xbcAct, b, c * s.chunk + s0 + i) : nullptr;
        cs[i][j] = rowT != nullptr && n0 + j < S ? rowT[cOffset + n0 + j] : 0.f;
        bs[i][j] = rowS != nullptr && n0 + j < S ? rowS[bOffset + n0 + j] : 0.f;
      }
      __syncthreads();
      for (int n = 0; n < kTile; ++n) {
        float const cv = cs[tr][n];
        for (int q = 0; q < 4; ++q) {
          gacc[q] += cv * bs[tc * 4 + q][n];
        }
      }
      __syncthreads();
    }
    for (int q = 0; q < 4; ++q) {
      int const sl = s0 + tc * 4 + q;
      gs[tr][tc * 4 + q] = sl <= lr && sl < s.chunk ? gacc[q] * expf(cumRow[tr] - cum[dtBase + sl]) * dtp[dtBase + sl] : 0.f;
    }
    for (int e = threadIdx.x; e < kTile * P; e += blockDim.x) {
      int const i = e / P;
      int const p = e % P;
      float const* rowS = s0 + i < s.chunk ? actRow(s, xbcAct, b, c * s.chunk + s0 + i) : nullptr;
      xs[i][p] = rowS != nullptr ? rowS[h * P + p] : 0.f;
    }
    __syncthreads();
    for (int si = 0; si < kTile; ++si) {
      float const gv = gs[tr][si];
      for (int j = 0; j < kOutCols; ++j) {
        int const p = tc + 8 * j;
        if (p < P) {
          acc[j] += gv * xs[si][p];
        }
      }
    }
    __syncthreads();
  }

  // From the state entering the chunk.
  float const* entering = states + ((int64_t(b) * nc + c) * s.heads + h) * int64_t(P) * S;
  for (int n0 = 0; n0 < S; n0 += kTile) {
    for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
      int const i = e / kTile;
      int const j = e % kTile;
      float const* rowT = r0 + i < s.chunk ? actRow(s, xbcAct, b, c * s.chunk + r0 + i) : nullptr;
      cs[i][j] = rowT != nullptr && n0 + j < S ? rowT[cOffset + n0 + j] : 0.f;
    }
    for (int e = threadIdx.x; e < P * kTile; e += blockDim.x) {
      int const p = e / kTile;
      int const j = e % kTile;
      es[p][j] = n0 + j < S ? entering[int64_t(p) * S + n0 + j] : 0.f;
    }
    __syncthreads();
    for (int n = 0; n < kTile; ++n) {
      float const cv = cs[tr][n];
      for (int j = 0; j < kOutCols; ++j) {
        int const p = tc + 8 * j;
        if (p < P) {
          accOff[j] += cv * es[p][n];
        }
      }
    }
    __syncthreads();
  }

  float const* row = lr < s.chunk ? actRow(s, xbcAct, b, c * s.chunk + lr) : nullptr;
  if (row == nullptr) {
    return;
  }
  float const scale = expf(cumRow[tr]);
  float const d = toFloat(dSkip[h]);
  float* out = y + (int64_t(b) * s.seqlen + c * s.chunk + lr) * s.heads * P + int64_t(h) * P;
  for (int j = 0; j < kOutCols; ++j) {
    int const p = tc + 8 * j;
    if (p < P) {
      out[p] = acc[j] + accOff[j] * scale + d * row[h * P + p];
    }
  }
}

template <typename T>
cudaError_t enqueueTyped(Mamba2Sizes const& s, Mamba2Buffers const& io, void* workspace, cudaStream_t stream) {
  if (s.batch == 0 || s.seqlen == 0) {
    return cudaSuccess;
  }
  Workspace const ws = carve(workspace, s);
  auto const* xbc = static_cast<T const*>(io.xbc);
  auto const* dt = static_cast<T const*>(io.dt);
  auto const* dtBias = static_cast<T const*>(io.dtBias);
  auto const* aLog = static_cast<T const*>(io.aLog);
  auto const* dSkip = static_cast<T const*>(io.d);
  dim3 const convGrid(unsigned(ceilDiv(s.channels, kConvThreads)), unsigned(s.batch));
  NDP_LAUNCH(convKernel<T>, convGrid, dim3(kConvThreads), stream, s, xbc, io.mask, static_cast<T const*>(io.convState),
             static_cast<T const*>(io.convWeight), static_cast<T const*>(io.convBias), ws.xbcAct, static_cast<T*>(io.newConvState));
  if (s.seqlen == 1) {
    dim3 const grid(unsigned(ceilDiv(s.headDim, kDecodeWarps)), unsigned(s.heads), unsigned(s.batch));
    NDP_LAUNCH(decodeKernel<T>, grid, dim3(kDecodeWarps * 32), stream, s, ws.xbcAct, dt, io.mask, io.ssmState, dtBias, aLog, dSkip, io.y,
               io.newSsmState);
    return ndpGetLastError();
  }
  unsigned const nc = unsigned(s.numChunks());
  dim3 const perChunk(nc, unsigned(s.heads), unsigned(s.batch));
  NDP_LAUNCH(chunkDtKernel<T>, perChunk, dim3(kScanThreads), stream, s, dt, dtBias, io.mask, aLog, ws.dtp, ws.cum);
  NDP_LAUNCH(chunkStateKernel, perChunk, dim3(kScanThreads), stream, s, ws.xbcAct, ws.dtp, ws.cum, ws.states);
  dim3 const perElement(unsigned(ceilDiv(int64_t(s.headDim) * s.stateSize, kScanThreads)), unsigned(s.heads), unsigned(s.batch));
  NDP_LAUNCH(statePassingKernel, perElement, dim3(kScanThreads), stream, s, ws.cum, io.ssmState, ws.states, io.newSsmState);
  dim3 const perRowTile(nc * unsigned(ceilDiv(s.chunk, kTile)), unsigned(s.heads), unsigned(s.batch));
  NDP_LAUNCH(chunkOutputKernel<T>, perRowTile, dim3(kScanThreads), stream, s, ws.xbcAct, ws.dtp, ws.cum, ws.states, dSkip, io.y);
  return ndpGetLastError();
}

}  // namespace

size_t mamba2WorkspaceBytes(Mamba2Sizes const& sizes) {
  size_t parts[4];
  return sizes4(sizes, parts);
}

cudaError_t mamba2Enqueue(ActivationType type, Mamba2Sizes const& sizes, Mamba2Buffers const& buffers, void* workspace,
                          cudaStream_t stream) {
  return withActivationType(type, [&](auto zero) { return enqueueTyped<decltype(zero)>(sizes, buffers, workspace, stream); });
}

}  // namespace ndp
