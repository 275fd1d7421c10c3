// The Mamba2Core TensorRT plugin (IPluginV3) and its creator. Contract: exporter/plugin_ops.py.
#pragma once

#include "../common/plugin_base.h"
#include "mamba2_core_kernels.h"

namespace ndp
{

class Mamba2CorePlugin : public PluginBase
{
public:
    struct Attributes
    {
        int32_t nGroups;
        int32_t headDim;
        int32_t stateSize;
        int32_t chunkSize;
        float dtMin;
        float dtMax;
    };

    explicit Mamba2CorePlugin(Attributes const& attributes);

    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t getNbOutputs() const noexcept override
    {
        return 3;
    }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    Mamba2Sizes sizes(nvinfer1::Dims const& xbc, nvinfer1::Dims const& dt, nvinfer1::Dims const& weight) const;

    Attributes mAttributes;
    FieldWriter mFields;
};

class Mamba2CoreCreator : public CreatorBase
{
public:
    Mamba2CoreCreator();
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

} // namespace ndp
