#include "nemotron_deploy/tensorrt_engine.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include "nemotron_deploy/error.h"

namespace nemotron_deploy {

const EngineRecord& pick_engine(const Manifest& manifest, const std::string& kind, std::string* chosen_kind) {
  if (!kind.empty() && kind != "tensorrt" && kind != "tensorrt-rtx")
    throw Error("engine '" + kind + "': expected one of tensorrt, tensorrt-rtx");
  for (const char* k : {"tensorrt", "tensorrt-rtx"}) {
    if ((kind.empty() || kind == k) && manifest.engines.count(k)) {
      if (chosen_kind) *chosen_kind = k;
      return manifest.engines.at(k);
    }
  }
  const std::string what = kind.empty() ? "no TensorRT engines" : "no " + kind + " engines";
  throw Error(manifest.dir + ": " + what + "; build them first: nemotron-deploy build " + manifest.dir + " --engine " +
              (kind.empty() ? "tensorrt" : kind));
}

void check_tensorrt_version(const EngineRecord& record, const std::string& loaded_version, const std::string& plan) {
  // the loaded library reports major.minor.patch; a record may add the build number
  const std::string recorded =
      record.version.substr(0, record.version.find('.', record.version.find('.', record.version.find('.') + 1) + 1));
  if (recorded != loaded_version)
    throw Error(plan + ": built with TensorRT " + record.version + ", this is " + loaded_version +
                "; rebuild with `nemotron-deploy build`");
}

void check_gpu(const EngineRecord& record, const std::string& device_capability, const std::string& device_name, const std::string& plan) {
  const std::string target = record.compute_capability == "native" ? record.built_on : record.compute_capability;
  if (!target.empty() && target != device_capability)
    throw Error(plan + ": built for compute capability " + target + ", this GPU (" + device_name + ") is " + device_capability +
                "; rebuild on (or for) this GPU with `nemotron-deploy build`");
}

namespace {

void cuda_check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) throw Error(what + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg;
    if (severity <= Severity::kWARNING && std::getenv("NEMOTRON_DEPLOY_TRT_VERBOSE")) fprintf(stderr, "[TensorRT] %s\n", msg);
  }
  std::string last_error;
};

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": missing (listed in manifest.json's engines)");
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

// A device buffer, freed on the engine's stream.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
};

int64_t volume(const nvinfer1::Dims& d) {
  int64_t n = 1;
  for (int i = 0; i < d.nbDims; ++i) n *= d.d[i];
  return n;
}

int64_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT:
      return 4;
    case nvinfer1::DataType::kHALF:
      return 2;
    case nvinfer1::DataType::kBF16:
      return 2;
    case nvinfer1::DataType::kINT64:
      return 8;
    case nvinfer1::DataType::kINT32:
      return 4;
    default:
      throw Error("an engine tensor of an unexpected data type");
  }
}

}  // namespace

struct TensorRTEngine::Impl {
  Manifest manifest;
  EngineRecord record;
  Logger logger;
  void* library = nullptr;
  nvinfer1::IRuntime* runtime = nullptr;
  std::map<Graph, nvinfer1::ICudaEngine*> engines;
  std::map<Graph, nvinfer1::IExecutionContext*> contexts;
  cudaStream_t stream = nullptr;
  std::map<std::string, DeviceBuffer> states;  // past.* by name
  DeviceBuffer ids, mask, logits, empty;
  std::vector<float> host_logits;
  int64_t batch = 0;

  // CUDA-graph decode, where no state grows (no attention layers): per batch size, two graphs over two
  // static state buffers (graph 0 reads buffer 0 and writes buffer 1, graph 1 the reverse), so decode
  // steps replay without binding or copying states. Without attention layers only the new token's mask
  // column is read, so the mask input is a static (batch, 1).
  struct Captured {
    DeviceBuffer ids, mask;
    std::vector<DeviceBuffer> buffers[2];  // per state, in manifest order
    DeviceBuffer logits[2];
    cudaGraphExec_t exec[2] = {nullptr, nullptr};
  };
  bool graphable = false;
  std::map<int64_t, Captured> captured;
  int side = -1;  // which buffer of captured[batch] holds the states; -1: they are in `states`

  void load_tensorrt(const std::string& kind) {
    const char* name = kind == "tensorrt-rtx" ? "libtensorrt_rtx.so.1" : "libnvinfer.so.10";
    library = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
    if (!library)
      throw Error(std::string("cannot load TensorRT (") + name + "): " + dlerror() + "; install TensorRT 10 or add it to LD_LIBRARY_PATH");
    auto create = reinterpret_cast<void* (*)(void*, int32_t)>(dlsym(library, "createInferRuntime_INTERNAL"));
    auto version = reinterpret_cast<int32_t (*)()>(dlsym(library, "getInferLibVersion"));
    if (!create || !version) throw Error(std::string(name) + ": not a TensorRT runtime library (no createInferRuntime_INTERNAL)");
    const int32_t v = version();
    const std::string loaded = std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
    check_tensorrt_version(record, loaded, manifest.file(record.prefill_plan));
    runtime = static_cast<nvinfer1::IRuntime*>(create(&logger, NV_TENSORRT_VERSION));
    if (!runtime) throw Error("TensorRT could not create a runtime: " + logger.last_error);
  }

  void load_plugins(const std::string& given) {
    if (manifest.plugins.empty()) return;
    const char* env = std::getenv("NEMOTRON_DEPLOY_PLUGINS");
    const std::string path = !given.empty() ? given : (env && *env ? env : record.plugins);
    if (path.empty())
      throw Error(manifest.dir + ": its graphs use plugins (" + manifest.plugins[0].name + " v" + manifest.plugins[0].version +
                  ", ...); pass the plugin library (`nemotron-deploy plugins build` prints it) or set NEMOTRON_DEPLOY_PLUGINS");
    if (!std::ifstream(path)) throw Error("plugin library " + path + ": no such file (build it with `nemotron-deploy plugins build`)");
    auto registry_of = reinterpret_cast<nvinfer1::IPluginRegistry* (*)()>(dlsym(library, "getPluginRegistry"));
    nvinfer1::IPluginRegistry* registry = registry_of ? registry_of() : nullptr;
    if (!registry || !registry->loadLibrary(path.c_str()))
      throw Error("plugin library " + path + ": TensorRT could not load it (not a plugin library, or built for another platform)");
    for (const PluginRecord& p : manifest.plugins)
      if (!registry->getCreator(p.name.c_str(), p.version.c_str(), p.name_space.c_str()))
        throw Error("plugin library " + path + ": has no plugin " + p.name + " version " + p.version + " in namespace '" + p.name_space +
                    "', which " + manifest.file("manifest.json") +
                    " records; build the library from the nemotron-deploy that "
                    "exported the artifact (`nemotron-deploy plugins build`), or re-export");
  }

  void load_engines() {
    for (auto [graph, file] : {std::pair{Graph::Prefill, record.prefill_plan}, std::pair{Graph::Decode, record.decode_plan}}) {
      const std::vector<char> plan = read_file(manifest.file(file));
      nvinfer1::ICudaEngine* engine = runtime->deserializeCudaEngine(plan.data(), plan.size());
      if (!engine) throw Error(manifest.file(file) + ": TensorRT cannot deserialize it (" + logger.last_error + ")");
      engines[graph] = engine;
      contexts[graph] = engine->createExecutionContext();
      if (!contexts[graph]) throw Error(manifest.file(file) + ": cannot create an execution context (" + logger.last_error + ")");
    }
  }

  void upload(DeviceBuffer& buffer, const void* host, size_t bytes) {
    reserve(buffer, bytes);
    cuda_check(cudaMemcpyAsync(buffer.ptr, host, bytes, cudaMemcpyHostToDevice, stream), "copy to the GPU");
  }

  void reserve(DeviceBuffer& buffer, size_t bytes) {
    if (buffer.bytes >= bytes && buffer.ptr) return;
    if (buffer.ptr) cuda_check(cudaFreeAsync(buffer.ptr, stream), "cudaFreeAsync");
    cuda_check(cudaMallocAsync(&buffer.ptr, std::max<size_t>(bytes, 256), stream), "cudaMallocAsync");
    buffer.bytes = std::max<size_t>(bytes, 256);
  }

  // TensorRT wants a valid address even for an empty tensor (a K/V cache with past length 0)
  void* address(const DeviceBuffer& b) { return b.bytes ? b.ptr : empty.ptr; }

  void free_states() {
    for (auto& [name, buffer] : states)
      if (buffer.ptr) cudaFreeAsync(buffer.ptr, stream);
    states.clear();
  }

  // Bind inputs and outputs of one decode step over captured buffers, inputs from buffer `from`.
  void bind_captured(Captured& c, int from) {
    nvinfer1::IExecutionContext* context = contexts.at(Graph::Decode);
    auto shape = [](std::vector<int64_t> dims) {
      nvinfer1::Dims d{};
      d.nbDims = static_cast<int32_t>(dims.size());
      for (size_t i = 0; i < dims.size(); ++i) d.d[i] = dims[i];
      return d;
    };
    bool ok = context->setInputShape("input_ids", shape({batch, 1})) && context->setTensorAddress("input_ids", c.ids.ptr) &&
              context->setInputShape("attention_mask", shape({batch, 1})) && context->setTensorAddress("attention_mask", c.mask.ptr);
    for (size_t i = 0; i < manifest.states.size(); ++i) {
      const StateSpec& spec = manifest.states[i];
      ok = ok && context->setInputShape(spec.name.c_str(), shape(spec.initial_shape(batch))) &&
           context->setTensorAddress(spec.name.c_str(), c.buffers[from][i].ptr) &&
           context->setTensorAddress(spec.present.c_str(), c.buffers[1 - from][i].ptr);
    }
    ok = ok && context->setTensorAddress("logits", c.logits[from].ptr);
    if (!ok) throw Error("decode engine: TensorRT refused a binding of the CUDA-graph step (" + logger.last_error + ")");
  }

  Captured& capture() {
    auto found = captured.find(batch);
    if (found != captured.end()) return found->second;
    Captured& c = captured[batch];
    reserve(c.ids, batch * sizeof(int64_t));
    reserve(c.mask, batch * sizeof(int64_t));
    for (int side_ : {0, 1}) {
      for (const StateSpec& spec : manifest.states) {
        int64_t n = dtype_size(spec.dtype);
        for (int64_t d : spec.initial_shape(batch)) n *= d;
        DeviceBuffer b;
        reserve(b, n);
        c.buffers[side_].push_back(b);
      }
      reserve(c.logits[side_], batch * manifest.vocab_size * sizeof(float));
    }
    nvinfer1::IExecutionContext* context = contexts.at(Graph::Decode);
    for (int from : {0, 1}) {
      bind_captured(c, from);
      if (!context->enqueueV3(stream)) throw Error("decode engine: warm-up before capture failed (" + logger.last_error + ")");
      cuda_check(cudaStreamSynchronize(stream), "decode warm-up");
      cudaGraph_t graph = nullptr;
      cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      const bool enqueued = context->enqueueV3(stream);
      cuda_check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
      if (!enqueued) throw Error("decode engine: enqueue under CUDA-graph capture failed (" + logger.last_error + ")");
      cuda_check(cudaGraphInstantiate(&c.exec[from], graph, 0), "cudaGraphInstantiate");
      cudaGraphDestroy(graph);
    }
    return c;
  }

  const float* replay_decode(const std::vector<int64_t>& ids_host, const std::vector<int64_t>& mask_host, int64_t total_len) {
    Captured& c = capture();
    if (side < 0) {  // states from the prefill: into buffer 0 once
      for (size_t i = 0; i < manifest.states.size(); ++i) {
        const DeviceBuffer& from = states[manifest.states[i].name];
        if (from.bytes)
          cuda_check(cudaMemcpyAsync(c.buffers[0][i].ptr, from.ptr, from.bytes, cudaMemcpyDeviceToDevice, stream), "state copy");
      }
      side = 0;
    }
    std::vector<int64_t> last_column(batch);
    for (int64_t r = 0; r < batch; ++r) last_column[r] = mask_host[r * total_len + total_len - 1];
    cuda_check(cudaMemcpyAsync(c.ids.ptr, ids_host.data(), batch * sizeof(int64_t), cudaMemcpyHostToDevice, stream), "copy to the GPU");
    cuda_check(cudaMemcpyAsync(c.mask.ptr, last_column.data(), batch * sizeof(int64_t), cudaMemcpyHostToDevice, stream), "copy to the GPU");
    cuda_check(cudaGraphLaunch(c.exec[side], stream), "cudaGraphLaunch");
    host_logits.resize(batch * manifest.vocab_size);
    cuda_check(cudaMemcpyAsync(host_logits.data(), c.logits[side].ptr, host_logits.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
               "copy the logits to the host");
    cuda_check(cudaStreamSynchronize(stream), "decode step");
    side = 1 - side;
    return host_logits.data();
  }
};

TensorRTEngine::TensorRTEngine(const Manifest& manifest, const EngineOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.manifest = manifest;
  std::string kind;
  s.record = pick_engine(manifest, options.engine_kind, &kind);
  cuda_check(cudaSetDevice(options.device), "cudaSetDevice(" + std::to_string(options.device) + ")");
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties");
  check_gpu(s.record, std::to_string(prop.major) + std::to_string(prop.minor), prop.name, manifest.file(s.record.prefill_plan));
  cuda_check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  s.load_tensorrt(kind);
  s.load_plugins(options.plugin_library);
  s.load_engines();
  s.reserve(s.empty, 256);
  s.graphable = std::none_of(manifest.states.begin(), manifest.states.end(), [](const StateSpec& spec) { return spec.grows(); });
}

TensorRTEngine::~TensorRTEngine() {
  Impl& s = *impl_;
  if (s.stream) {
    s.free_states();
    for (auto& [batch, c] : s.captured) {
      for (int side : {0, 1}) {
        if (c.exec[side]) cudaGraphExecDestroy(c.exec[side]);
        for (auto& b : c.buffers[side]) cudaFreeAsync(b.ptr, s.stream);
        cudaFreeAsync(c.logits[side].ptr, s.stream);
      }
      cudaFreeAsync(c.ids.ptr, s.stream);
      cudaFreeAsync(c.mask.ptr, s.stream);
    }
    for (auto* b : {&s.ids, &s.mask, &s.logits, &s.empty})
      if (b->ptr) cudaFreeAsync(b->ptr, s.stream);
    cudaStreamSynchronize(s.stream);
    cudaStreamDestroy(s.stream);
  }
  for (auto& [graph, context] : s.contexts) delete context;
  for (auto& [graph, engine] : s.engines) delete engine;
  delete s.runtime;
  // the library stays loaded: TensorRT and the plugin library may still hold its code
}

int64_t TensorRTEngine::vocab_size() const { return impl_->manifest.vocab_size; }
int64_t TensorRTEngine::max_batch() const { return impl_->record.max_batch; }

void TensorRTEngine::reset(int64_t batch) {
  Impl& s = *impl_;
  if (batch > s.record.max_batch)
    throw Error("batch " + std::to_string(batch) + ": the engines were built for at most " + std::to_string(s.record.max_batch) +
                " (nemotron-deploy build --max-batch)");
  s.free_states();
  s.batch = batch;
  s.side = -1;
  for (const StateSpec& spec : s.manifest.states) {
    int64_t n = dtype_size(spec.dtype);
    for (int64_t d : spec.initial_shape(batch)) n *= d;
    DeviceBuffer& b = s.states[spec.name];
    if (n) {
      s.reserve(b, n);
      cuda_check(cudaMemsetAsync(b.ptr, 0, n, s.stream), "cudaMemsetAsync");
    }
    b.bytes = n;
  }
}

const float* TensorRTEngine::step(Graph graph, const std::vector<int64_t>& ids, int64_t new_tokens, const std::vector<int64_t>& mask,
                                  int64_t total_len) {
  Impl& s = *impl_;
  if (total_len > s.record.max_seq_len)
    throw Error(std::to_string(total_len) + " tokens: the engines were built for at most " + std::to_string(s.record.max_seq_len) +
                " (nemotron-deploy build --max-seq-len)");
  if (graph == Graph::Prefill && new_tokens > s.record.max_new_tokens) {  // longer than the profile: in pieces
    const float* logits = nullptr;
    const int64_t past = total_len - new_tokens;
    for (int64_t start = 0; start < new_tokens; start += s.record.max_new_tokens) {
      const int64_t end = std::min(start + s.record.max_new_tokens, new_tokens);
      std::vector<int64_t> piece, piece_mask;
      for (int64_t r = 0; r < s.batch; ++r) {
        piece.insert(piece.end(), ids.begin() + r * new_tokens + start, ids.begin() + r * new_tokens + end);
        piece_mask.insert(piece_mask.end(), mask.begin() + r * total_len, mask.begin() + r * total_len + past + end);
      }
      logits = step(graph, piece, end - start, piece_mask, past + end);
    }
    return logits;
  }
  if (graph == Graph::Decode && s.graphable && std::getenv("NEMOTRON_DEPLOY_NO_CUDA_GRAPHS") == nullptr)
    return s.replay_decode(ids, mask, total_len);
  nvinfer1::IExecutionContext* context = s.contexts.at(graph);
  nvinfer1::ICudaEngine* engine = s.engines.at(graph);
  s.upload(s.ids, ids.data(), ids.size() * sizeof(int64_t));
  s.upload(s.mask, mask.data(), mask.size() * sizeof(int64_t));
  auto bind_input = [&](const std::string& name, void* ptr, std::vector<int64_t> shape) {
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) dims.d[i] = shape[i];
    if (!context->setInputShape(name.c_str(), dims) || !context->setTensorAddress(name.c_str(), ptr))
      throw Error("engine input '" + name + "': TensorRT refused its shape or address (" + s.logger.last_error + ")");
  };
  bind_input("input_ids", s.ids.ptr, {s.batch, new_tokens});
  bind_input("attention_mask", s.mask.ptr, {s.batch, total_len});
  const int64_t past = total_len - new_tokens;
  for (const StateSpec& spec : s.manifest.states) {
    std::vector<int64_t> shape = spec.initial_shape(s.batch);
    if (spec.grows()) shape[2] = past;
    bind_input(spec.name, s.address(s.states[spec.name]), shape);
  }
  // outputs: fresh buffers for the presents (they become the next step's states), the logits buffer reused
  std::map<std::string, DeviceBuffer> presents;
  for (const StateSpec& spec : s.manifest.states) {
    const nvinfer1::Dims dims = context->getTensorShape(spec.present.c_str());
    DeviceBuffer& b = presents[spec.name];
    const int64_t bytes = volume(dims) * element_size(engine->getTensorDataType(spec.present.c_str()));
    if (bytes) s.reserve(b, bytes);
    b.bytes = bytes;
    context->setTensorAddress(spec.present.c_str(), s.address(b));
  }
  const nvinfer1::Dims logits_dims = context->getTensorShape("logits");  // (batch, 1, vocab)
  s.reserve(s.logits, volume(logits_dims) * sizeof(float));
  context->setTensorAddress("logits", s.logits.ptr);
  if (!context->enqueueV3(s.stream))
    throw Error(std::string(graph == Graph::Prefill ? "prefill" : "decode") + " engine: enqueue failed (" + s.logger.last_error + ")");
  s.free_states();
  s.states = std::move(presents);
  const int64_t vocab = s.manifest.vocab_size;
  s.host_logits.resize(s.batch * vocab);
  const int64_t positions = volume(logits_dims) / (s.batch * vocab);  // 1, or new_tokens with all_logits
  cuda_check(cudaMemcpy2DAsync(s.host_logits.data(), vocab * sizeof(float), static_cast<float*>(s.logits.ptr) + (positions - 1) * vocab,
                               positions * vocab * sizeof(float), vocab * sizeof(float), s.batch, cudaMemcpyDeviceToHost, s.stream),
             "copy the logits to the host");
  cuda_check(cudaStreamSynchronize(s.stream), "decode step");
  return s.host_logits.data();
}

}  // namespace nemotron_deploy
