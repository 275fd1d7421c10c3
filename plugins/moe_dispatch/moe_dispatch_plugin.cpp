#include "moe_dispatch_plugin.h"

namespace ndp {
using namespace nvinfer1;
using namespace contract::moe_dispatch;

// The kernels' fixed-size buffers are the contract's limits.
static_assert(kFields[kTOP_K].max == kMoeMaxTopK, "top_k limit: contract.json vs kernels");
static_assert(kFields[kN_GROUP].max == kMoeMaxGroups && kFields[kTOPK_GROUP].max == kMoeMaxGroups, "group limit: contract.json vs kernels");

void MoeDispatchPlugin::outputShapes(DimsExprs const* inputs, DimsExprs* outputs, IExprBuilder&) const {
  outputs[kROUTED] = inputs[kH];  // [N, D]
}

void MoeDispatchPlugin::checkShapes(ShapeCheck& check) const {
  int64_t const topK = intAttribute(kTOP_K);
  int64_t const nGroup = intAttribute(kN_GROUP);
  int64_t const experts = check.dim(kEXPERTS_UP, 0);
  int64_t const inter = check.dim(kEXPERTS_UP, 1);
  int64_t const hidden = check.dim(kH, 1);
  if (experts >= 0) {
    check.require(experts % nGroup == 0, "experts (experts_up dim 0) must be a multiple of n_group");
    int64_t const perGroup = experts / nGroup;
    check.require(nGroup == 1 || perGroup >= 2, "each router group needs at least 2 experts");
    check.require(intAttribute(kTOPK_GROUP) * perGroup >= topK, "top_k exceeds the experts of topk_group groups");
  }
  check.equal(kROUTER_LOGITS, 0, check.dim(kH, 0), "tokens of h");
  check.equal(kROUTER_LOGITS, 1, experts, "experts");
  check.equal(kCORRECTION_BIAS, 0, experts, "experts");
  check.equal(kEXPERTS_UP, 2, hidden, "expert input width, h dim 1");
  check.equal(kEXPERTS_DOWN, 0, experts, "experts");
  check.equal(kEXPERTS_DOWN, 1, hidden, "expert input width, h dim 1");
  check.equal(kEXPERTS_DOWN, 2, inter, "expert width, experts_up dim 1");
}

MoeSizes MoeDispatchPlugin::sizes(Dims const& h, Dims const& up) const {
  MoeSizes s{};
  s.tokens = h.d[0];
  s.hidden = int(h.d[1]);
  s.experts = int(up.d[0]);
  s.inter = int(up.d[1]);
  s.topK = intAttribute(kTOP_K);
  s.nGroup = intAttribute(kN_GROUP);
  s.topkGroup = intAttribute(kTOPK_GROUP);
  s.normTopkProb = intAttribute(kNORM_TOPK_PROB) != 0;
  s.scaling = floatAttribute(kROUTED_SCALING_FACTOR);
  return s;
}

size_t MoeDispatchPlugin::workspaceBytes(Dims const* inputs) const { return moeWorkspaceBytes(sizes(inputs[kH], inputs[kEXPERTS_UP])); }

cudaError_t MoeDispatchPlugin::launch(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void* workspace,
                                      cudaStream_t stream) const {
  MoeBuffers io{};
  io.h = inputs[kH];
  io.logits = static_cast<float const*>(inputs[kROUTER_LOGITS]);
  io.bias = static_cast<float const*>(inputs[kCORRECTION_BIAS]);
  io.up = inputs[kEXPERTS_UP];
  io.down = inputs[kEXPERTS_DOWN];
  io.out = static_cast<float*>(outputs[kROUTED]);
  MoeSizes const s = sizes(inputDesc[kH].dims, inputDesc[kEXPERTS_UP].dims);
  return moeEnqueue(activationType(inputDesc[kH].type), s, io, workspace, stream);
}

}  // namespace ndp
