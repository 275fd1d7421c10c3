#include "plugin_base.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace ndp {
using namespace nvinfer1;

namespace {
ILoggerFinder* gLoggerFinder = nullptr;

void logText(char const* text) noexcept {
  ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
  if (logger != nullptr) {
    logger->log(ILogger::Severity::kERROR, text);
  } else {
    std::fprintf(stderr, "%s\n", text);
  }
}

bool isActivationType(DataType type) { return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16; }

}  // namespace

void setLoggerFinder(ILoggerFinder* finder) noexcept { gLoggerFinder = finder; }

void logError(std::string const& message) noexcept {
  try {
    logText(("[nemotron_deploy plugins] " + message).c_str());
  } catch (...)  // no memory for the prefix: the message alone
  {
    logText(message.c_str());
  }
}

void logFailure(char const* plugin, char const* method, char const* what) noexcept {
  try {
    logError(std::string(plugin) + "." + method + ": " + what);
  } catch (...) {
    logText(what);
  }
}

void injectFailure(char const* method) {
#ifdef NDP_EMULATE
  char const* wanted = std::getenv("NDP_INJECT_FAILURE");
  if (wanted != nullptr && std::strcmp(wanted, method) == 0) {
    throw std::runtime_error("injected failure");
  }
#else
  (void)method;
#endif
}

ActivationType activationType(DataType type) noexcept {
  return type == DataType::kHALF ? ActivationType::kHALF : type == DataType::kBF16 ? ActivationType::kBF16 : ActivationType::kFLOAT;
}

namespace {

PluginFieldType fieldType(FieldKind kind) { return kind == FieldKind::kINT ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32; }

double numeric(FieldSpec const& spec, FieldValue const& v) { return spec.kind == FieldKind::kINT ? double(v.i) : double(v.f); }

//! The field named `spec.name` with one value of its kind, or null and an error.
PluginField const* findField(FieldSpec const& spec, PluginFieldCollection const& fc, std::vector<std::string>& errors) {
  for (int32_t i = 0; i < fc.nbFields; ++i) {
    PluginField const& f = fc.fields[i];
    if (f.name != nullptr && std::strcmp(f.name, spec.name) == 0) {
      if (f.type == fieldType(spec.kind) && f.length == 1 && f.data != nullptr) {
        return &f;
      }
      errors.push_back(std::string("attribute '") + spec.name + "' must be one " +
                       (spec.kind == FieldKind::kINT ? "INT (int32)" : "FLOAT (float32)") + " value");
      return nullptr;
    }
  }
  errors.push_back(std::string("attribute '") + spec.name + "' is missing");
  return nullptr;
}

//! `f`'s value if within `spec`'s range, else an error (and the value stays as read).
FieldValue readValue(FieldSpec const& spec, PluginField const& f, std::vector<std::string>& errors) {
  FieldValue v{};
  if (spec.kind == FieldKind::kINT) {
    v.i = *static_cast<int32_t const*>(f.data);
  } else {
    v.f = *static_cast<float const*>(f.data);
  }
  double const x = numeric(spec, v);
  std::ostringstream s;
  if (std::isnan(x)) {
    s << "attribute '" << spec.name << "' is NaN";
  } else if (x < spec.min || x > spec.max) {
    s << "attribute '" << spec.name << "' is ";
    if (spec.kind == FieldKind::kINT) {
      s << v.i << ", expected " << int64_t(spec.min) << ".." << int64_t(spec.max);
    } else {
      s << v.f << ", expected " << spec.min << " <= value <= " << spec.max;
    }
  }
  if (!s.str().empty()) {
    errors.push_back(s.str());
  }
  return v;
}

}  // namespace

bool readFields(Contract const& contract, PluginFieldCollection const* fields, std::vector<FieldValue>& values) {
  std::vector<std::string> errors;
  std::vector<bool> present(contract.nbFields, false);
  values.assign(contract.nbFields, FieldValue{});
  if (fields == nullptr) {
    errors.emplace_back("no attributes were given");
  }
  for (int32_t i = 0; fields != nullptr && i < contract.nbFields; ++i) {
    FieldSpec const& spec = contract.fields[i];
    if (PluginField const* f = findField(spec, *fields, errors)) {
      values[i] = readValue(spec, *f, errors);
      present[i] = true;
    }
  }
  for (int32_t i = 0; i < contract.nbFields; ++i) {
    int32_t const bound = contract.fields[i].atMost;
    if (bound >= 0 && present[i] && present[bound] &&
        numeric(contract.fields[i], values[i]) > numeric(contract.fields[bound], values[bound])) {
      errors.push_back(std::string("attribute '") + contract.fields[i].name + "' must not exceed '" + contract.fields[bound].name + "'");
    }
  }
  for (std::string const& e : errors) {
    logError(std::string(contract.name) + ": " + e);
  }
  return errors.empty();
}

void ShapeCheck::equal(int port, int axis, int64_t want, char const* rule) {
  int64_t const have = dim(port, axis);
  if (have >= 0 && want >= 0 && have != want) {
    std::ostringstream s;
    s << "input '" << mContract.portNames[port] << "' dim " << axis << " is " << have << ", expected " << want << " (" << rule << ")";
    mErrors.push_back(s.str());
  }
}

void ShapeCheck::require(bool condition, std::string const& message) {
  if (!condition) {
    mErrors.push_back(message);
  }
}

bool ShapeCheck::ok() const {
  for (std::string const& e : mErrors) {
    logError(std::string(mContract.name) + ": " + e);
  }
  return mErrors.empty();
}

PluginBase::PluginBase(Contract const& contract, std::vector<FieldValue> attributes)
    : mContract(contract), mAttributes(std::move(attributes)) {}

IPluginCapability* PluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kCORE:
      return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD:
      return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME:
      return static_cast<IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

bool PluginBase::checkArity(int32_t nbInputs, int32_t nbOutputs) const {
  if (nbInputs == mContract.nbInputs && nbOutputs == mContract.nbOutputs) {
    return true;
  }
  std::ostringstream s;
  s << mContract.name << ": expected " << mContract.nbInputs << " inputs and " << mContract.nbOutputs << " outputs, got " << nbInputs
    << " and " << nbOutputs;
  logError(s.str());
  return false;
}

bool PluginBase::checkInputRanks(int32_t const* ranks) const {
  bool ok = true;
  for (int32_t i = 0; i < mContract.nbInputs; ++i) {
    if (ranks[i] != mContract.portRanks[i]) {
      logError(std::string(mContract.name) + ": input '" + mContract.portNames[i] + "' has rank " + std::to_string(ranks[i]) +
               ", expected " + std::to_string(mContract.portRanks[i]));
      ok = false;
    }
  }
  return ok;
}

int32_t PluginBase::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                       int32_t nbInputs) const noexcept {
  return guarded(mContract.name, "getOutputDataTypes", -1, [&] {
    if (!checkArity(nbInputs, nbOutputs)) {
      return -1;
    }
    for (int32_t i = 0; i < nbOutputs; ++i) {
      bool const activation = mContract.portTypes[nbInputs + i] == 'T';
      outputTypes[i] = activation ? inputTypes[mContract.activationInput] : DataType::kFLOAT;
    }
    return 0;
  });
}

int32_t PluginBase::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                                    int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept {
  return guarded(mContract.name, "getOutputShapes", -1, [&] {
    std::vector<int32_t> ranks(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i) {
      ranks[i] = inputs[i].nbDims;
    }
    if (!checkArity(nbInputs, nbOutputs) || !checkInputRanks(ranks.data())) {
      return -1;
    }
    outputShapes(inputs, outputs, exprBuilder);
    return 0;
  });
}

bool PluginBase::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                           int32_t nbOutputs) noexcept {
  return guarded(mContract.name, "supportsFormatCombination", false, [&] {
    if (nbInputs != mContract.nbInputs || nbOutputs != mContract.nbOutputs) {
      return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) {
      return false;
    }
    if (mContract.portTypes[pos] == 'f') {
      return d.type == DataType::kFLOAT;
    }
    // the activation input picks the type (it comes first), every other 'T' port matches it
    return isActivationType(d.type) && d.type == inOut[mContract.activationInput].desc.type;
  });
}

int32_t PluginBase::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                                    int32_t nbOutputs) noexcept {
  return guarded(mContract.name, "configurePlugin", -1, [&] {
    if (!checkArity(nbInputs, nbOutputs)) {
      return -1;
    }
    std::vector<int32_t> ranks(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i) {
      ranks[i] = in[i].desc.dims.nbDims;
    }
    if (!checkInputRanks(ranks.data())) {
      return -1;
    }
    ShapeCheck check(mContract, in);
    checkShapes(check);
    return check.ok() ? 0 : -1;
  });
}

size_t PluginBase::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*,
                                    int32_t) const noexcept {
  return guarded(mContract.name, "getWorkspaceSize", size_t(0), [&] {
    if (nbInputs != mContract.nbInputs) {
      return size_t(0);
    }
    std::vector<Dims> maxima(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i) {
      maxima[i] = inputs[i].max;
    }
    return workspaceBytes(maxima.data());
  });
}

int32_t PluginBase::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                            void* workspace, cudaStream_t stream) noexcept {
  return guarded(mContract.name, "enqueue", -1, [&] {
    cudaError_t const status = launch(inputDesc, inputs, outputs, workspace, stream);
    if (status != cudaSuccess) {
      logError(std::string(mContract.name) + ": kernel launch failed: " + cudaErrorText(status));
      return -1;
    }
    return 0;
  });
}

PluginFieldCollection const* PluginBase::getFieldsToSerialize() noexcept {
  return guarded<PluginFieldCollection const*>(mContract.name, "getFieldsToSerialize", nullptr, [&] {
    mSerialized.clear();
    for (int32_t i = 0; i < mContract.nbFields; ++i) {
      FieldSpec const& spec = mContract.fields[i];
      FieldValue const& v = mAttributes[i];
      void const* data = spec.kind == FieldKind::kINT ? static_cast<void const*>(&v.i) : &v.f;
      mSerialized.emplace_back(spec.name, data, fieldType(spec.kind), 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mSerialized.size());
    mCollection.fields = mSerialized.data();
    return &mCollection;
  });
}

CreatorBase::CreatorBase(Contract const& contract) : mContract(contract) {
  for (int32_t i = 0; i < contract.nbFields; ++i) {
    mFields.emplace_back(contract.fields[i].name, nullptr, fieldType(contract.fields[i].kind), 1);
  }
  mCollection.nbFields = static_cast<int32_t>(mFields.size());
  mCollection.fields = mFields.data();
}

}  // namespace ndp
