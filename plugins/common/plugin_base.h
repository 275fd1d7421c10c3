// What every plugin of the library shares: logging through TensorRT's logger, reading and writing
// PluginFields, tensor-type checks, and the IPluginV3 / IPluginV3OneCore / Build / Runtime plumbing.
#pragma once

#include <NvInferRuntime.h>

#include "activation_type.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ndp
{

constexpr char const* kPluginNamespace = "nemotron_deploy";

//! Called from setLoggerFinder(); messages go to TensorRT's logger (or stderr before one is set).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logError(std::string const& message) noexcept;

bool isActivationType(nvinfer1::DataType type) noexcept;
//! The kernels' type for a tensor that supportsFormatCombination accepted (fp32, fp16 or bf16).
ActivationType activationType(nvinfer1::DataType type) noexcept;
char const* typeName(nvinfer1::DataType type) noexcept;
int64_t volume(nvinfer1::Dims const& dims) noexcept;

//! Reads the node attributes a creator receives. Every problem is recorded (and logged by `ok()`),
//! naming the plugin, the attribute and what was expected.
class FieldReader
{
public:
    FieldReader(char const* pluginName, nvinfer1::PluginFieldCollection const* fields);

    int32_t getInt(char const* name, int32_t minValue, int32_t maxValue);
    float getFloat(char const* name);
    void require(bool condition, std::string const& message);
    bool ok() const;

private:
    nvinfer1::PluginField const* find(char const* name, nvinfer1::PluginFieldType type);

    std::string mPlugin;
    nvinfer1::PluginFieldCollection const* mFields;
    std::vector<std::string> mErrors;
};

//! Collects inconsistencies between a plugin's input shapes, each naming the tensor, the dimension,
//! both values and the rule; `ok()` logs them. Unknown (-1) dimensions are not compared.
class ShapeCheck
{
public:
    ShapeCheck(char const* plugin, char const* const* portNames, nvinfer1::DynamicPluginTensorDesc const* in)
        : mPlugin(plugin)
        , mPorts(portNames)
        , mIn(in)
    {
    }

    int64_t dim(int port, int axis) const
    {
        return mIn[port].desc.dims.d[axis];
    }
    //! Every input has its contract rank; logs and returns false otherwise (check this first).
    bool ranks(int32_t const* wanted, int32_t nbInputs);
    void equal(int port, int axis, int64_t want, char const* rule);
    void require(bool condition, std::string const& message);
    bool ok() const;

private:
    char const* mPlugin;
    char const* const* mPorts;
    nvinfer1::DynamicPluginTensorDesc const* mIn;
    std::vector<std::string> mErrors;
};

//! getOutputShapes' rank check of the inputs; logs the first mismatch.
bool checkRanks(char const* plugin, char const* const* portNames, nvinfer1::DimsExprs const* inputs,
    int32_t const* wanted, int32_t nbInputs) noexcept;

//! Owns the attribute storage behind getFieldsToSerialize() / getFieldNames().
class FieldWriter
{
public:
    void addInt(char const* name, int32_t value);
    void addFloat(char const* name, float value);
    nvinfer1::PluginFieldCollection const* collection();

private:
    struct Value
    {
        char const* name;
        bool isInt;
        int32_t i;
        float f;
    };
    std::vector<Value> mValues;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

//! The IPluginV3 plumbing; a plugin supplies the build and runtime methods.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PluginBase(char const* name) : mName(name) {}

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    char const* getPluginName() const noexcept override
    {
        return mName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return "1";
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone();
    }
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }

protected:
    //! supportsFormatCombination for ports typed by `signature`: 'T' = the activation type of
    //! position 0 (fp32/fp16/bf16), 'f' = float32; every tensor linear.
    bool supportsSignature(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, char const* signature) const
        noexcept;
    //! Checks nbInputs/nbOutputs against the contract; logs and returns false on mismatch.
    bool checkArity(int32_t nbInputs, int32_t nbOutputs, int32_t wantInputs, int32_t wantOutputs) const noexcept;

private:
    char const* mName;
};

//! clone() of a plugin whose whole state is its attributes (never throws through TensorRT).
template <typename Plugin, typename Attributes>
nvinfer1::IPluginV3* newPlugin(Attributes const& attributes) noexcept
{
    try
    {
        return new Plugin(attributes);
    }
    catch (...)
    {
        logError("out of memory creating a plugin");
        return nullptr;
    }
}

//! The creator plumbing: name, version, namespace and the attribute list TensorRT's parser reads.
class CreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    CreatorBase(char const* name, std::vector<std::pair<char const*, nvinfer1::PluginFieldType>> const& fields);
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }
    char const* getPluginName() const noexcept override
    {
        return mName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return "1";
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

private:
    char const* mName;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace ndp

namespace ndp
{
//! cudaGetErrorString, or a fixed text in the CPU emulation (which links no CUDA runtime).
char const* cudaErrorText(cudaError_t status) noexcept;
} // namespace ndp
