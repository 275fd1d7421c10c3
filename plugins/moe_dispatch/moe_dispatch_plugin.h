// The MoeDispatch TensorRT plugin (IPluginV3) and its creator. Contract: contract.json (generated into
// moe_dispatch_contract.h); torch reference: `moe_dispatch` in exporter/modeling/mlp.py.
#pragma once

#include "../common/plugin_base.h"
#include "moe_dispatch_contract.h"
#include "moe_dispatch_kernels.h"

namespace ndp {

class MoeDispatchPlugin : public PluginBase {
 public:
  static constexpr Contract const& kContract = contract::moe_dispatch::kContract;

  explicit MoeDispatchPlugin(std::vector<FieldValue> const& attributes) : PluginBase(kContract, attributes) {}

  nvinfer1::IPluginV3* clone() noexcept override { return cloneAs<MoeDispatchPlugin>(); }

 private:
  void outputShapes(nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs* outputs, nvinfer1::IExprBuilder& exprBuilder) const override;
  void checkShapes(ShapeCheck& check) const override;
  size_t workspaceBytes(nvinfer1::Dims const* inputs) const override;
  cudaError_t launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void* workspace,
                     cudaStream_t stream) const override;
  MoeSizes sizes(nvinfer1::Dims const& h, nvinfer1::Dims const& up) const;
};

using MoeDispatchCreator = Creator<MoeDispatchPlugin>;

}  // namespace ndp
