// The Mamba2Core TensorRT plugin (IPluginV3) and its creator. Contract: contract.json (generated into
// mamba2_core_contract.h); torch reference: `mamba2_core` in exporter/modeling/mamba.py.
#pragma once

#include "../common/plugin_base.h"
#include "mamba2_core_contract.h"
#include "mamba2_core_kernels.h"

namespace ndp {

class Mamba2CorePlugin : public PluginBase {
 public:
  static constexpr Contract const& kContract = contract::mamba2_core::kContract;

  explicit Mamba2CorePlugin(std::vector<FieldValue> const& attributes) : PluginBase(kContract, attributes) {}

  nvinfer1::IPluginV3* clone() noexcept override { return cloneAs<Mamba2CorePlugin>(); }

 private:
  void outputShapes(nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs* outputs, nvinfer1::IExprBuilder& exprBuilder) const override;
  void checkShapes(ShapeCheck& check) const override;
  size_t workspaceBytes(nvinfer1::Dims const* inputs) const override;
  cudaError_t launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void* workspace,
                     cudaStream_t stream) const override;
  Mamba2Sizes sizes(nvinfer1::Dims const& xbc, nvinfer1::Dims const& dt, nvinfer1::Dims const& weight) const;
};

using Mamba2CoreCreator = Creator<Mamba2CorePlugin>;

}  // namespace ndp
