// A C-ABI driver that exercises a plugin library exactly as TensorRT does, for the tests:
// dlopen -> setLoggerFinder -> getCreators -> createPlugin(fields, kBUILD) -> getOutputDataTypes /
// getOutputShapes / supportsFormatCombination / configurePlugin / getWorkspaceSize, then, like an
// engine at run time, getFieldsToSerialize -> createPlugin(kRUNTIME) -> attachToContext ->
// onShapeChange -> enqueue on the caller's buffers. Shapes are concrete here (min = opt = max), so
// the expression builder only folds constants.
// Used with the GPU library on device buffers, and with the CPU-emulation library on host buffers.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

class CapturingLogger : public ILogger {
 public:
  void log(Severity severity, char const* msg) noexcept override {
    if (severity <= Severity::kWARNING) {
      text += msg;
      text += "\n";
    }
  }
  std::string text;
};

class LoggerFinder : public ILoggerFinder {
 public:
  ILogger* findLogger() override { return &logger; }
  CapturingLogger logger;
};

LoggerFinder gFinder;

class ConstantImpl : public apiv::VDimensionExpr {
 public:
  explicit ConstantImpl(int64_t v) : value(v) {}
  bool isConstant() const override { return true; }
  int64_t getConstantValue() const override { return value; }
  bool isSizeTensor() const override { return false; }
  int64_t value;
};

class Constant : public IDimensionExpr {
 public:
  explicit Constant(int64_t v) : impl(v) { mImpl = &impl; }
  ConstantImpl impl;
};

class ConstantFolder : public apiv::VExprBuilder {
 public:
  IDimensionExpr const* constant(int64_t value) override {
    exprs.emplace_back(value);
    return &exprs.back();
  }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& first, IDimensionExpr const& second) override {
    int64_t const a = first.getConstantValue();
    int64_t const b = second.getConstantValue();
    switch (op) {
      case DimensionOperation::kSUM:
        return constant(a + b);
      case DimensionOperation::kPROD:
        return constant(a * b);
      case DimensionOperation::kMAX:
        return constant(a > b ? a : b);
      case DimensionOperation::kMIN:
        return constant(a < b ? a : b);
      case DimensionOperation::kSUB:
        return constant(a - b);
      case DimensionOperation::kEQUAL:
        return constant(a == b);
      case DimensionOperation::kLESS:
        return constant(a < b);
      case DimensionOperation::kFLOOR_DIV:
        return constant(a / b);
      case DimensionOperation::kCEIL_DIV:
        return constant((a + b - 1) / b);
    }
    return nullptr;
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override { return nullptr; }
  std::deque<Constant> exprs;
};

class Builder : public IExprBuilder {
 public:
  Builder() { mImpl = &folder; }
  ConstantFolder folder;
};

struct Library {
  void* handle;
  std::vector<IPluginCreatorV3One*> creators;
};

struct Plugin {
  Library* library;
  IPluginCreatorV3One* creator;
  IPluginV3* plugin;
};

using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
using SetLoggerFinder = void (*)(ILoggerFinder*);

void logHarness(std::string const& message) { gFinder.logger.text += "[harness] " + message + "\n"; }

std::vector<PluginTensorDesc> descriptors(int n, int const* types, int const* ranks, int64_t const* dims) {
  std::vector<PluginTensorDesc> out(n);
  for (int i = 0; i < n; ++i) {
    out[i].type = static_cast<DataType>(types[i]);
    out[i].format = TensorFormat::kLINEAR;
    out[i].scale = 1.f;
    out[i].dims.nbDims = ranks[i];
    for (int j = 0; j < ranks[i]; ++j) {
      out[i].dims.d[j] = dims[i * Dims::MAX_DIMS + j];
    }
  }
  return out;
}

std::vector<DynamicPluginTensorDesc> dynamic(std::vector<PluginTensorDesc> const& descs) {
  std::vector<DynamicPluginTensorDesc> out(descs.size());
  for (size_t i = 0; i < descs.size(); ++i) {
    out[i].desc = descs[i];
    out[i].min = out[i].opt = out[i].max = descs[i].dims;
  }
  return out;
}

//! Parses "name=i:3;other=f:0.5" into PluginFields (int32 / float32), the form TensorRT's ONNX parser gives.
struct Fields {
  explicit Fields(char const* spec) {
    std::stringstream all(spec != nullptr ? spec : "");
    std::string item;
    std::vector<std::tuple<std::string, char, std::string>> parsed;
    while (std::getline(all, item, ';')) {
      size_t const eq = item.find('=');
      if (eq == std::string::npos || item.size() < eq + 3) {
        continue;
      }
      parsed.emplace_back(item.substr(0, eq), item[eq + 1], item.substr(eq + 3));
    }
    names.reserve(parsed.size());
    ints.reserve(parsed.size());
    floats.reserve(parsed.size());
    for (auto const& [name, kind, value] : parsed) {
      names.push_back(name);
      if (kind == 'i') {
        ints.push_back(std::atoi(value.c_str()));
        fields.emplace_back(names.back().c_str(), &ints.back(), PluginFieldType::kINT32, 1);
      } else {
        floats.push_back(std::strtof(value.c_str(), nullptr));
        fields.emplace_back(names.back().c_str(), &floats.back(), PluginFieldType::kFLOAT32, 1);
      }
    }
    collection.nbFields = int32_t(fields.size());
    collection.fields = fields.data();
  }
  std::vector<std::string> names;
  std::vector<int32_t> ints;
  std::vector<float> floats;
  std::vector<PluginField> fields;
  PluginFieldCollection collection{};
};

}  // namespace

extern "C" {

char const* ndh_log() { return gFinder.logger.text.c_str(); }

void ndh_clear_log() { gFinder.logger.text.clear(); }

void* ndh_open(char const* path) {
  void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    logHarness(std::string("dlopen failed: ") + dlerror());
    return nullptr;
  }
  auto setFinder = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"));
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
  if (setFinder == nullptr || getCreators == nullptr) {
    logHarness("the library lacks setLoggerFinder or getCreators");
    return nullptr;
  }
  setFinder(&gFinder);
  auto* library = new Library{handle, {}};
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = getCreators(n);
  for (int32_t i = 0; i < n; ++i) {
    library->creators.push_back(static_cast<IPluginCreatorV3One*>(creators[i]));
  }
  return library;
}

//! "name|version|namespace|field:type,field:type" per creator, one per line.
int ndh_creators(void* lib, char* out, int outLen) {
  std::string text;
  for (IPluginCreatorV3One* c : static_cast<Library*>(lib)->creators) {
    text += std::string(c->getPluginName()) + "|" + c->getPluginVersion() + "|" + c->getPluginNamespace() + "|";
    PluginFieldCollection const* fc = c->getFieldNames();
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      text += std::string(i ? "," : "") + fc->fields[i].name + ":" + std::to_string(static_cast<int>(fc->fields[i].type));
    }
    text += "\n";
  }
  std::strncpy(out, text.c_str(), size_t(outLen));
  return int(text.size());
}

void* ndh_create(void* lib, char const* name, char const* fieldSpec) {
  for (IPluginCreatorV3One* c : static_cast<Library*>(lib)->creators) {
    if (std::strcmp(c->getPluginName(), name) == 0) {
      Fields fields(fieldSpec);
      IPluginV3* plugin = c->createPlugin(name, &fields.collection, TensorRTPhase::kBUILD);
      return plugin != nullptr ? new Plugin{static_cast<Library*>(lib), c, plugin} : nullptr;
    }
  }
  logHarness(std::string("no creator named ") + name);
  return nullptr;
}

void ndh_destroy(void* p) {
  auto* plugin = static_cast<Plugin*>(p);
  delete plugin->plugin;
  delete plugin;
}

//! supportsFormatCombination at `pos`, the tensors having `types` (inputs then outputs).
int ndh_supports(void* p, int pos, int nbIn, int nbOut, int const* types) {
  auto* build = static_cast<IPluginV3OneBuild*>(static_cast<Plugin*>(p)->plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  std::vector<DynamicPluginTensorDesc> descs(nbIn + nbOut);
  for (int i = 0; i < nbIn + nbOut; ++i) {
    descs[i].desc.type = static_cast<DataType>(types[i]);
    descs[i].desc.format = TensorFormat::kLINEAR;
    descs[i].desc.dims.nbDims = 0;
  }
  return build->supportsFormatCombination(pos, descs.data(), nbIn, nbOut) ? 1 : 0;
}

//! The build phase. Fills the outputs' types and shapes and the workspace size; returns 0, or the
//! number (1..5) of the step that failed.
int ndh_build(void* p, int nbIn, int const* inTypes, int const* inRanks, int64_t const* inDims, int nbOut, int* outTypes, int* outRanks,
              int64_t* outDims, size_t* workspace) {
  auto* build = static_cast<IPluginV3OneBuild*>(static_cast<Plugin*>(p)->plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  std::vector<PluginTensorDesc> in = descriptors(nbIn, inTypes, inRanks, inDims);
  if (build->getNbOutputs() != nbOut) {
    logHarness("getNbOutputs disagrees with the caller");
    return 1;
  }
  std::vector<DataType> inT(nbIn);
  std::vector<DataType> outT(nbOut);
  for (int i = 0; i < nbIn; ++i) {
    inT[i] = in[i].type;
  }
  if (build->getOutputDataTypes(outT.data(), nbOut, inT.data(), nbIn) != 0) {
    return 2;
  }
  Builder builder;
  std::vector<DimsExprs> inExprs(nbIn);
  for (int i = 0; i < nbIn; ++i) {
    inExprs[i].nbDims = in[i].dims.nbDims;
    for (int j = 0; j < in[i].dims.nbDims; ++j) {
      inExprs[i].d[j] = builder.folder.constant(in[i].dims.d[j]);
    }
  }
  std::vector<DimsExprs> outExprs(nbOut);
  if (build->getOutputShapes(inExprs.data(), nbIn, nullptr, 0, outExprs.data(), nbOut, builder) != 0) {
    return 3;
  }
  std::vector<PluginTensorDesc> out(nbOut);
  for (int i = 0; i < nbOut; ++i) {
    outTypes[i] = static_cast<int>(outT[i]);
    outRanks[i] = outExprs[i].nbDims;
    out[i].type = outT[i];
    out[i].format = TensorFormat::kLINEAR;
    out[i].dims.nbDims = outExprs[i].nbDims;
    for (int j = 0; j < outExprs[i].nbDims; ++j) {
      out[i].dims.d[j] = outExprs[i].d[j]->getConstantValue();
      outDims[i * Dims::MAX_DIMS + j] = out[i].dims.d[j];
    }
  }
  std::vector<PluginTensorDesc> all(in);
  all.insert(all.end(), out.begin(), out.end());
  std::vector<DynamicPluginTensorDesc> dynAll = dynamic(all);
  for (int pos = 0; pos < nbIn + nbOut; ++pos) {
    if (!build->supportsFormatCombination(pos, dynAll.data(), nbIn, nbOut)) {
      logHarness("supportsFormatCombination refused position " + std::to_string(pos));
      return 4;
    }
  }
  if (build->configurePlugin(dynAll.data(), nbIn, dynAll.data() + nbIn, nbOut) != 0) {
    return 5;
  }
  *workspace = build->getWorkspaceSize(dynAll.data(), nbIn, dynAll.data() + nbIn, nbOut);
  return 0;
}

//! The run-time phase, as a deserialized engine does it: recreate the plugin from its serialized fields
//! (createPlugin, kRUNTIME) and attach it to a context. Returns the run-time plugin, or null.
void* ndh_runtime(void* p) {
  auto* plugin = static_cast<Plugin*>(p);
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  PluginFieldCollection const* fields = runtime->getFieldsToSerialize();
  std::unique_ptr<IPluginV3> recreated(plugin->creator->createPlugin(plugin->creator->getPluginName(), fields, TensorRTPhase::kRUNTIME));
  if (recreated == nullptr) {
    return nullptr;
  }
  auto* recreatedRuntime = static_cast<IPluginV3OneRuntime*>(recreated->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  return recreatedRuntime->attachToContext(nullptr);
}

void ndh_runtime_destroy(void* runtime) { delete static_cast<IPluginV3*>(runtime); }

//! onShapeChange + enqueue on the caller's buffers; returns their status (-101: onShapeChange failed).
int ndh_enqueue(void* runtimePlugin, int nbIn, int const* inTypes, int const* inRanks, int64_t const* inDims, int nbOut,
                int const* outTypes, int const* outRanks, int64_t const* outDims, void const* const* inputs, void* const* outputs,
                void* workspace, void* stream) {
  auto* run =
      static_cast<IPluginV3OneRuntime*>(static_cast<IPluginV3*>(runtimePlugin)->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::vector<PluginTensorDesc> in = descriptors(nbIn, inTypes, inRanks, inDims);
  std::vector<PluginTensorDesc> out = descriptors(nbOut, outTypes, outRanks, outDims);
  if (run->onShapeChange(in.data(), nbIn, out.data(), nbOut) != 0) {
    return -101;
  }
  return run->enqueue(in.data(), out.data(), inputs, outputs, workspace, static_cast<cudaStream_t>(stream));
}

}  // extern "C"
