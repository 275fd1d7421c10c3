// What every plugin of the library shares: logging through TensorRT's logger, the exception guard of
// the noexcept entry points, and the IPluginV3 / creator plumbing driven by the plugin's generated
// contract (<plugin>_contract.h): names, arity, port types, ranks and attributes come from there.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "activation_type.h"
#include "contract_types.h"

namespace ndp {

//! Called from setLoggerFinder(); messages go to TensorRT's logger (or stderr before one is set).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logError(std::string const& message) noexcept;
//! "<plugin>.<method>: <what>", for an exception caught at an entry point.
void logFailure(char const* plugin, char const* method, char const* what) noexcept;
//! The CPU emulation's test hook: throws in `method` when $NDP_INJECT_FAILURE names it (no-op on the GPU).
void injectFailure(char const* method);

//! Runs the body of a noexcept entry point: TensorRT must never see an exception, so one becomes a
//! logged "<plugin>.<method>: <what>" and `onError` is returned instead.
template <typename Result, typename Body>
Result guarded(char const* plugin, char const* method, Result onError, Body&& body) noexcept {
  try {
    injectFailure(method);
    return body();
  } catch (std::exception const& e) {
    logFailure(plugin, method, e.what());
  } catch (...) {
    logFailure(plugin, method, "unknown exception");
  }
  return onError;
}

//! The kernels' type for a tensor that supportsFormatCombination accepted (fp32, fp16 or bf16).
ActivationType activationType(nvinfer1::DataType type) noexcept;
//! cudaGetErrorString, or a fixed text in the CPU emulation (which links no CUDA runtime).
char const* cudaErrorText(cudaError_t status) noexcept;

//! One attribute's value; which member holds it is the contract's FieldSpec::kind.
struct FieldValue {
  int32_t i;
  float f;
};

//! Reads and checks the node attributes a creator receives against the contract's field list (kind,
//! range, at-most relation); logs every problem, naming the plugin, the attribute and what was expected.
//! Returns false on any problem.
bool readFields(Contract const& contract, nvinfer1::PluginFieldCollection const* fields, std::vector<FieldValue>& values);

//! Collects inconsistencies between a plugin's input shapes, each naming the tensor, the dimension,
//! both values and the rule; `ok()` logs them. Unknown (-1) dimensions are not compared.
class ShapeCheck {
 public:
  ShapeCheck(Contract const& contract, nvinfer1::DynamicPluginTensorDesc const* in) : mContract(contract), mIn(in) {}

  int64_t dim(int port, int axis) const { return mIn[port].desc.dims.d[axis]; }
  void equal(int port, int axis, int64_t want, char const* rule);
  void require(bool condition, std::string const& message);
  bool ok() const;

 private:
  Contract const& mContract;
  nvinfer1::DynamicPluginTensorDesc const* mIn;
  std::vector<std::string> mErrors;
};

//! The IPluginV3 plumbing, every entry point guarded. What is generic (types, arity, ranks, attribute
//! (de)serialisation) is done here from the contract; a plugin supplies the shape rules and the launch.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  PluginBase(Contract const& contract, std::vector<FieldValue> attributes);

  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  char const* getPluginName() const noexcept override { return mContract.name; }
  char const* getPluginVersion() const noexcept override { return mContract.version; }
  char const* getPluginNamespace() const noexcept override { return mContract.pluginNamespace; }
  int32_t getNbOutputs() const noexcept override { return mContract.nbOutputs; }
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*, int32_t) noexcept override {
    return 0;
  }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  //! 'T' ports: fp32/fp16/bf16, all the type of the contract's activation input; 'f' ports float32;
  //! every tensor linear.
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs, nvinfer1::DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 protected:
  std::vector<FieldValue> const& attributes() const { return mAttributes; }
  int32_t intAttribute(int32_t field) const { return mAttributes[field].i; }
  float floatAttribute(int32_t field) const { return mAttributes[field].f; }
  //! clone() of a plugin whose whole state is its attributes.
  template <typename Plugin>
  nvinfer1::IPluginV3* cloneAs() const noexcept {
    return guarded<nvinfer1::IPluginV3*>(mContract.name, "clone", nullptr, [&] { return new Plugin(mAttributes); });
  }

  // What each plugin supplies; called with arity and input ranks already checked, and may throw.
  //! The outputs' shapes in terms of the inputs'.
  virtual void outputShapes(nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs* outputs, nvinfer1::IExprBuilder& exprBuilder) const = 0;
  //! The rules between the input dimensions and the attributes (the contract's shapes, the kernels' limits).
  virtual void checkShapes(ShapeCheck& check) const = 0;
  //! Workspace bytes for these input shapes (the profile's maxima).
  virtual size_t workspaceBytes(nvinfer1::Dims const* inputs) const = 0;
  virtual cudaError_t launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void* workspace,
                             cudaStream_t stream) const = 0;

 private:
  //! nbInputs/nbOutputs against the contract; logs and returns false on mismatch.
  bool checkArity(int32_t nbInputs, int32_t nbOutputs) const;
  //! Every input has its contract rank; logs the mismatches and returns false otherwise.
  bool checkInputRanks(int32_t const* ranks) const;

  Contract const& mContract;
  std::vector<FieldValue> mAttributes;
  std::vector<nvinfer1::PluginField> mSerialized;
  nvinfer1::PluginFieldCollection mCollection{};
};

//! The creator plumbing: name, version, namespace and the attribute list TensorRT's parser reads.
class CreatorBase : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit CreatorBase(Contract const& contract);
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }
  char const* getPluginName() const noexcept override { return mContract.name; }
  char const* getPluginVersion() const noexcept override { return mContract.version; }
  char const* getPluginNamespace() const noexcept override { return mContract.pluginNamespace; }

 protected:
  Contract const& mContract;

 private:
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

//! The creator of `Plugin` (constructed from its checked attributes), for `Plugin::kContract`.
template <typename Plugin>
class Creator : public CreatorBase {
 public:
  Creator() : CreatorBase(Plugin::kContract) {}
  nvinfer1::IPluginV3* createPlugin(char const*, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase) noexcept override {
    return guarded<nvinfer1::IPluginV3*>(mContract.name, "createPlugin", nullptr, [&]() -> nvinfer1::IPluginV3* {
      std::vector<FieldValue> values;
      return readFields(mContract, fc, values) ? new Plugin(values) : nullptr;
    });
  }
};

}  // namespace ndp
