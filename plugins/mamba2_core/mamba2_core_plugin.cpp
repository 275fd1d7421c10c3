#include "mamba2_core_plugin.h"

namespace ndp {
using namespace nvinfer1;
using namespace contract::mamba2_core;

// The kernels' fixed-size buffers are the contract's limits.
static_assert(kFields[kHEAD_DIM].max == kMamba2MaxHeadDim, "head_dim limit: contract.json vs kernels");
static_assert(kFields[kCHUNK_SIZE].max == kMamba2MaxChunk, "chunk_size limit: contract.json vs kernels");
static_assert(kMaxK == kMamba2MaxConvKernel, "conv kernel limit: contract.json vs kernels");

void Mamba2CorePlugin::outputShapes(DimsExprs const* inputs, DimsExprs* outputs, IExprBuilder& exprBuilder) const {
  outputs[kY].nbDims = 3;  // [B, T, H*P]
  outputs[kY].d[0] = inputs[kXBC].d[0];
  outputs[kY].d[1] = inputs[kXBC].d[1];
  outputs[kY].d[2] = exprBuilder.operation(DimensionOperation::kPROD, *inputs[kDT].d[2], *exprBuilder.constant(intAttribute(kHEAD_DIM)));
  outputs[kNEW_CONV_STATE] = inputs[kCONV_STATE];
  outputs[kNEW_SSM_STATE] = inputs[kSSM_STATE];
}

void Mamba2CorePlugin::checkShapes(ShapeCheck& check) const {
  int64_t const groups = intAttribute(kN_GROUPS);
  int64_t const headDim = intAttribute(kHEAD_DIM);
  int64_t const stateSize = intAttribute(kSTATE_SIZE);
  int64_t const channels = check.dim(kXBC, 2);
  int64_t const heads = check.dim(kDT, 2);
  int64_t const kernel = check.dim(kCONV_WEIGHT, 1);
  check.require(heads < 0 || heads % groups == 0, "heads (dt dim 2) must be a multiple of n_groups");
  check.require(kernel < 0 || (kernel >= kMinK && kernel <= kMaxK),
                "conv kernel (conv_weight dim 1) must be " + std::to_string(kMinK) + ".." + std::to_string(kMaxK));
  if (heads >= 0) {
    check.equal(kXBC, 2, heads * headDim + 2 * groups * stateSize, "H*P + 2*G*S");
  }
  check.equal(kDT, 0, check.dim(kXBC, 0), "batch of xbc");
  check.equal(kDT, 1, check.dim(kXBC, 1), "new tokens of xbc");
  check.equal(kMASK, 0, check.dim(kXBC, 0), "batch of xbc");
  check.equal(kMASK, 1, check.dim(kXBC, 1), "new tokens of xbc");
  check.equal(kCONV_STATE, 0, check.dim(kXBC, 0), "batch of xbc");
  check.equal(kCONV_STATE, 1, channels, "conv channels C");
  check.equal(kCONV_STATE, 2, kernel < 0 ? -1 : kernel - 1, "conv kernel - 1");
  check.equal(kSSM_STATE, 0, check.dim(kXBC, 0), "batch of xbc");
  check.equal(kSSM_STATE, 1, heads, "heads H");
  check.equal(kSSM_STATE, 2, headDim, "head_dim");
  check.equal(kSSM_STATE, 3, stateSize, "state_size");
  check.equal(kCONV_WEIGHT, 0, channels, "conv channels C");
  check.equal(kCONV_BIAS, 0, channels, "conv channels C");
  check.equal(kDT_BIAS, 0, heads, "heads H");
  check.equal(kA_LOG, 0, heads, "heads H");
  check.equal(kD, 0, heads, "heads H");
}

Mamba2Sizes Mamba2CorePlugin::sizes(Dims const& xbc, Dims const& dt, Dims const& weight) const {
  Mamba2Sizes s{};
  s.batch = int(xbc.d[0]);
  s.seqlen = int(xbc.d[1]);
  s.channels = int(xbc.d[2]);
  s.kernel = int(weight.d[1]);
  s.heads = int(dt.d[2]);
  s.headDim = intAttribute(kHEAD_DIM);
  s.groups = intAttribute(kN_GROUPS);
  s.stateSize = intAttribute(kSTATE_SIZE);
  s.chunk = intAttribute(kCHUNK_SIZE);
  s.dtMin = floatAttribute(kDT_MIN);
  s.dtMax = floatAttribute(kDT_MAX);
  return s;
}

size_t Mamba2CorePlugin::workspaceBytes(Dims const* inputs) const {
  return mamba2WorkspaceBytes(sizes(inputs[kXBC], inputs[kDT], inputs[kCONV_WEIGHT]));
}

cudaError_t Mamba2CorePlugin::launch(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void* workspace,
                                     cudaStream_t stream) const {
  Mamba2Buffers io{};
  io.xbc = inputs[kXBC];
  io.dt = inputs[kDT];
  io.mask = static_cast<float const*>(inputs[kMASK]);
  io.convState = inputs[kCONV_STATE];
  io.ssmState = static_cast<float const*>(inputs[kSSM_STATE]);
  io.convWeight = inputs[kCONV_WEIGHT];
  io.convBias = inputs[kCONV_BIAS];
  io.dtBias = inputs[kDT_BIAS];
  io.aLog = inputs[kA_LOG];
  io.d = inputs[kD];
  io.y = static_cast<float*>(outputs[kY]);
  io.newConvState = outputs[kNEW_CONV_STATE];
  io.newSsmState = static_cast<float*>(outputs[kNEW_SSM_STATE]);
  Mamba2Sizes const s = sizes(inputDesc[kXBC].dims, inputDesc[kDT].dims, inputDesc[kCONV_WEIGHT].dims);
  return mamba2Enqueue(activationType(inputDesc[kXBC].type), s, io, workspace, stream);
}

}  // namespace ndp
